//! The checks and input decoding of each call, after the common checks in `handle`.

use super::*;

/// A parameter block at `gpa` of `bytes`: 8-byte aligned and inside one page (TLFS).
pub(super) fn check_block(gpa: u64, bytes: usize) -> CallResult {
    let room = PAGE_SIZE - gpa % PAGE_SIZE;
    if gpa % 8 != 0 || u64::try_from(bytes).map_or(true, |b| b > room) {
        Err(status::INVALID_ALIGNMENT)
    } else {
        Ok(())
    }
}

/// Reads the `var_words` packed banks at `at` into a set (KVM: var header size must equal
/// popcount(valid_bank_mask)). Returns the set and the index of the word after the banks.
pub(super) fn sparse_set(
    input: &Input,
    at: usize,
    valid_bank_mask: u64,
    all: bool,
    var_words: usize,
) -> Result<(VpSet, usize), u16> {
    if var_words != valid_bank_mask.count_ones() as usize {
        return Err(status::INVALID_HYPERCALL_INPUT);
    }
    let after = at
        .checked_add(var_words)
        .ok_or(status::INVALID_HYPERCALL_INPUT)?;
    if all {
        // The banks are skipped, not read (KVM).
        return Ok((VpSet::all(), after));
    }
    let packed = input.slice(at, var_words)?;
    let mut set = VpSet {
        all: false,
        banks: [0; 64],
    };
    let present = (0..64usize).filter(|bank| valid_bank_mask & (1 << bank) != 0);
    for (bank, value) in present.zip(packed) {
        set.banks[bank] = *value;
    }
    Ok((set, after))
}

/// HvFlushVirtualAddress{Space,List}{,Ex}.
pub(super) fn flush<M: Bytes<GuestAddress> + ?Sized>(
    call: &Call<'_>,
    mem: &M,
    services: &mut dyn HypercallServices,
) -> CallResult {
    call.check_shape()?;
    let ex = call.info.var_header;
    // Words: address space, flags, then processor_mask (non-Ex) or format + valid_bank_mask.
    let fixed = if ex { 4 } else { 3 };
    let input = call.input(mem, fixed + call.var_words() + call.rep_words())?;
    let address_space = input.word(0)?;
    let flags = input.word(1)?;
    let (processors, next) = if ex {
        // KVM: any format other than SPARSE_4K flushes everything (over-flushing is safe).
        let all = input.word(2)? != vp_set::SPARSE_4K;
        sparse_set(&input, 4, input.word(3)?, all, call.var_words())?
    } else {
        let mask = input.word(2)?;
        // KVM: processor_mask == 0 means every VP (WS2012 sends it expecting a flush).
        let all = flags & flush_flags::ALL_PROCESSORS != 0 || mask == 0;
        (
            if all {
                VpSet::all()
            } else {
                VpSet::from_mask(mask)
            },
            3,
        )
    };
    if processors.is_empty() {
        return Ok(());
    }
    let gvas = if call.info.rep {
        Some(input.slice(next, call.rep_words())?)
    } else {
        None
    };
    let request = FlushRequest {
        code: call.ctl.code,
        address_space,
        flags,
        processors,
        gvas,
    };
    check(services.flush_virtual_address(call.vcpu, &request))
}

/// Lowest and highest vector a synthetic IPI may carry.
pub(super) const IPI_VECTORS: RangeInclusive<u32> = IPI_VECTOR_MIN..=IPI_VECTOR_MAX;

/// HvSendSyntheticClusterIpi{,Ex}.
pub(super) fn send_ipi<M: Bytes<GuestAddress> + ?Sized>(
    call: &Call<'_>,
    mem: &M,
    services: &mut dyn HypercallServices,
) -> CallResult {
    call.check_shape()?;
    let (vector, targets) = if call.info.var_header {
        // {u32 vector; u32 rsvd; u64 format; u64 valid_bank_mask; banks}
        let input = call.input(mem, 3 + call.var_words())?;
        let vector = input.word(0)? as u32;
        // KVM: only HV_GENERIC_SET_ALL means all; anything else is a sparse set.
        let all = input.word(1)? == vp_set::ALL;
        let (targets, _) = sparse_set(&input, 3, input.word(2)?, all, call.var_words())?;
        if targets.is_empty() {
            // KVM succeeds before looking at the vector.
            return Ok(());
        }
        (vector, targets)
    } else {
        // {u32 vector; u32 rsvd; u64 cpu_mask}; fast: RDX = vector, R8 = mask.
        let input = call.input(mem, 2)?;
        let first = input.word(0)?;
        if call.ctl.fast && first >> 32 != 0 {
            return Err(status::INVALID_HYPERCALL_INPUT);
        }
        (first as u32, VpSet::from_mask(input.word(1)?))
    };
    if !IPI_VECTORS.contains(&vector) {
        return Err(status::INVALID_HYPERCALL_INPUT);
    }
    if targets.is_empty() {
        return Ok(());
    }
    let vector = u8::try_from(vector).map_err(|_| status::INVALID_HYPERCALL_INPUT)?;
    check(services.send_ipi(call.vcpu, vector, &targets))
}

/// HvCallNotifyLongSpinWait: advisory, its spin count is ignored.
pub(super) fn spin_wait(call: &Call<'_>, services: &mut dyn HypercallServices) -> CallResult {
    call.check_shape()?;
    services.notify_long_spin_wait(call.vcpu);
    Ok(())
}

/// HvCallPostMessage: {u32 connection_id; u32 rsvd; u32 type; u32 size; u8 payload[240]}.
pub(super) fn post_message<M: Bytes<GuestAddress> + ?Sized>(
    call: &Call<'_>,
    mem: &M,
    services: &mut dyn HypercallServices,
) -> CallResult {
    call.check_shape()?;
    if !services.synic_active(call.vcpu) {
        return Err(status::INVALID_HYPERCALL_INPUT);
    }
    // 256 bytes of input cannot travel in RDX/R8 (and KVM reads no XMM for this call).
    if call.ctl.fast {
        return Err(status::INVALID_HYPERCALL_INPUT);
    }
    let input = call.input(mem, 32)?;
    let header = input.word(1)?;
    let message_type = header as u32;
    let payload_size = (header >> 32) as u32;
    // TLFS: type 0 or with bit 31 set, or more than 240 bytes: INVALID_PARAMETER.
    if message_type == 0 || message_type & 0x8000_0000 != 0 || payload_size > 240 {
        return Err(status::INVALID_PARAMETER);
    }
    let mut payload = [0u8; 240];
    for (bytes, word) in payload.chunks_exact_mut(8).zip(input.slice(2, 30)?) {
        bytes.copy_from_slice(&word.to_le_bytes());
    }
    let message = PostMessage {
        connection_id: input.word(0)? as u32,
        message_type,
        payload_size,
        payload,
    };
    check(services.post_message(call.vcpu, &message))
}

/// HvCallSignalEvent: fast (RDX) or one word at the input GPA.
pub(super) fn signal_event<M: Bytes<GuestAddress> + ?Sized>(
    call: &Call<'_>,
    mem: &M,
    services: &mut dyn HypercallServices,
) -> CallResult {
    call.check_shape()?;
    let param = call.input(mem, 1)?.word(0)?;
    if param & SIGNAL_EVENT_RESERVED_MASK != 0 {
        return Err(status::INVALID_HYPERCALL_INPUT);
    }
    if !services.synic_active(call.vcpu) {
        return Err(status::INVALID_HYPERCALL_INPUT);
    }
    let connection_id = (param & SIGNAL_EVENT_CONNECTION_MASK) as u32;
    let flag_number = (param >> SIGNAL_EVENT_FLAG_SHIFT) as u16;
    check(services.signal_event(call.vcpu, connection_id, flag_number))
}

/// HvCallPostDebugData, HvCallRetrieveDebugData, HvCallResetDebugSession (KVM's order).
pub(super) fn debug_call(call: &Call<'_>, services: &mut dyn HypercallServices) -> CallResult {
    let code = call.ctl.code;
    if call.ctl.fast && code != code::RESET_DEBUG_SESSION {
        return Err(status::INVALID_PARAMETER);
    }
    if !call.offered.syndbg {
        return Err(status::INVALID_HYPERCALL_CODE);
    }
    call.check_shape()?;
    check(services.debug_hypercall(call.vcpu, code, call.regs.rdx, call.regs.r8))
}

/// Extended hypercalls 0x8001..=0x8041. Only HvExtCallQueryCapabilities is served; the
/// others are advertised by no capability bit, so they are unsupported codes.
pub(super) fn extended<M: Bytes<GuestAddress> + ?Sized>(
    call: &Call<'_>,
    mem: &M,
    services: &mut dyn HypercallServices,
) -> CallResult {
    if call.ctl.fast {
        return Err(status::INVALID_PARAMETER);
    }
    call.check_shape()?;
    if call.ctl.code != code::EXT_QUERY_CAPABILITIES {
        return Err(status::INVALID_HYPERCALL_CODE);
    }
    let output = call.regs.r8;
    check_block(output, 8)?;
    let capabilities = services.ext_query_capabilities(call.vcpu)?;
    mem.write_slice(&capabilities.to_le_bytes(), GuestAddress(output))
        .map_err(|_| status::INVALID_HYPERCALL_INPUT)
}
