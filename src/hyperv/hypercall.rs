//! Hyper-V hypercalls for the user backend: decode the control word, apply the same checks
//! KVM applies with `KVM_CAP_HYPERV_ENFORCE_CPUID` (the `hyperv_features.c` matrix), read the
//! input block, and hand a validated request to [`HypercallServices`].
//!
//! Pure code: no `unsafe`, no I/O, no KVM. Guest memory is reached only through the vm-memory
//! [`Bytes`] trait (copies, never references into guest RAM). Every guest-controlled value is
//! treated as hostile: arithmetic is checked, and the work per call is bounded by one page of
//! input (at most 512 words) whatever the rep count says.
//!
//! # Order of checks (as KVM's `kvm_hv_hypercall`)
//! 1. CPL > 0 or not 64-bit mode: #UD.
//! 2. A known code whose feature is not offered: `ACCESS_DENIED` (before anything else, so
//!    a caller without the privilege learns nothing more; TLFS "Ordering of Error Conditions").
//! 3. Reserved control bits: `INVALID_HYPERCALL_INPUT`.
//! 4. Unknown code: `INVALID_HYPERCALL_CODE`.
//! 5. Fast call of an XMM-input code (0x2/0x3/0x13/0x14/0x15) without `03.EDX[4]`: #UD.
//! 6. Per call: rep/variable-header shape, input alignment and page crossing, input contents,
//!    then the service.
//!
//! # Deliberate choices
//! - Only the 64-bit register ABI is implemented: a caller outside 64-bit mode (EFER.LMA and
//!   CS.L) gets #UD. KVM and the TLFS also accept 32-bit protected-mode callers with the
//!   EDX:EAX convention; hvkvm's guests are 64-bit, so that ABI is reported as unsupported.
//! - A slow input or output GPA must be 8-byte aligned and its block (fixed part, variable
//!   header and rep list) must not cross a page: else `INVALID_ALIGNMENT` (TLFS common status
//!   codes). KVM checks this only for SignalEvent.
//! - Guest memory that cannot be read or written (GPA outside RAM) gives
//!   `INVALID_HYPERCALL_INPUT`, as KVM's `kvm_hv_flush_tlb`/`kvm_hv_send_ipi` do when
//!   `kvm_read_guest` fails. (The TLFS lists `INVALID_ALIGNMENT` for a GPA outside the GPA
//!   space, and KVM's SignalEvent uses that too; one status for every call keeps this simple.)
//! - The module completes every rep or none, as KVM does: on success the result reports
//!   `rep_count` reps completed, and `rep_start` must be 0.
//! - Where KVM leaves a call to userspace (PostMessage, debug and extended calls) the TLFS
//!   rules apply: rep/variable-header shape, PostMessage type and size (`INVALID_PARAMETER`),
//!   and a fast PostMessage is `INVALID_HYPERCALL_INPUT` (256 bytes do not fit in RDX/R8).
//! - Smaller differences from KVM, all in error ordering or in cases no known guest uses:
//!   KVM skips reading a GVA list longer than 16 entries (it flushes everything), where this
//!   module requires the whole list inside the page; the page-crossing check uses the sizes
//!   in the control word, so it can be reported before a var-header/bank-mask mismatch.
//!   Input/output overlap is not checked.
//!
//! # What is reachable today
//! The user backend offers only the hypercall MSRs and (optionally) spinlock retries, so the
//! live paths are: unknown codes, `ACCESS_DENIED` for every gated call, reserved-bit and
//! shape errors, #UD, and `NotifyLongSpinWait`. Flush, IPI, PostMessage, SignalEvent,
//! extended and debug calls are validated here but only reach a service once the partition
//! offers their CPUID bit, which the model never does with the user backend yet; their
//! default trait methods say "not implemented" (see [`HypercallServices`]).
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::ops::RangeInclusive;

use vm_memory::{Bytes, GuestAddress};

/// Size of a guest page; hypercall input blocks must fit inside one.
pub const PAGE_SIZE: u64 = 4096;

/// Most input words a call can carry: one page of slow input.
const MAX_INPUT_WORDS: usize = (PAGE_SIZE / 8) as usize;

/// Words of fast input: RDX, R8 and the two halves of XMM0..XMM5 (112 bytes).
const XMM_FAST_WORDS: usize = 14;

/// Hypercall call codes (TLFS; L-mini).
pub mod code {
    /// HvCallFlushVirtualAddressSpace.
    pub const FLUSH_VIRTUAL_ADDRESS_SPACE: u16 = 0x0002;
    /// HvCallFlushVirtualAddressList (rep).
    pub const FLUSH_VIRTUAL_ADDRESS_LIST: u16 = 0x0003;
    /// HvCallNotifyLongSpinWait.
    pub const NOTIFY_LONG_SPIN_WAIT: u16 = 0x0008;
    /// HvCallSendSyntheticClusterIpi.
    pub const SEND_SYNTHETIC_CLUSTER_IPI: u16 = 0x000B;
    /// HvCallFlushVirtualAddressSpaceEx.
    pub const FLUSH_VIRTUAL_ADDRESS_SPACE_EX: u16 = 0x0013;
    /// HvCallFlushVirtualAddressListEx (rep).
    pub const FLUSH_VIRTUAL_ADDRESS_LIST_EX: u16 = 0x0014;
    /// HvCallSendSyntheticClusterIpiEx.
    pub const SEND_SYNTHETIC_CLUSTER_IPI_EX: u16 = 0x0015;
    /// HvCallPostMessage.
    pub const POST_MESSAGE: u16 = 0x005C;
    /// HvCallSignalEvent.
    pub const SIGNAL_EVENT: u16 = 0x005D;
    /// HvCallPostDebugData.
    pub const POST_DEBUG_DATA: u16 = 0x0069;
    /// HvCallRetrieveDebugData.
    pub const RETRIEVE_DEBUG_DATA: u16 = 0x006A;
    /// HvCallResetDebugSession.
    pub const RESET_DEBUG_SESSION: u16 = 0x006B;
    /// HvCallFlushGuestPhysicalAddressSpace (for nested hypervisors; not provided, as in KVM).
    pub const FLUSH_GUEST_PHYSICAL_ADDRESS_SPACE: u16 = 0x00AF;
    /// HvCallFlushGuestPhysicalAddressList (rep; not provided, as in KVM).
    pub const FLUSH_GUEST_PHYSICAL_ADDRESS_LIST: u16 = 0x00B0;
    /// HvCallSignalEventDirect (not provided, as in KVM).
    pub const SIGNAL_EVENT_DIRECT: u16 = 0x00C0;
    /// HvCallPostMessageDirect (not provided, as in KVM).
    pub const POST_MESSAGE_DIRECT: u16 = 0x00C1;
    /// HvExtCallQueryCapabilities, the first extended hypercall.
    pub const EXT_QUERY_CAPABILITIES: u16 = 0x8001;
    /// The last code KVM treats as an extended hypercall (gated by `03.EBX[20]`).
    pub const EXT_LAST: u16 = 0x8041;
}

/// `HV_STATUS` values (TLFS; L-mini).
pub mod status {
    /// The call succeeded.
    pub const SUCCESS: u16 = 0x0;
    /// Unknown or unsupported call code.
    pub const INVALID_HYPERCALL_CODE: u16 = 0x2;
    /// Bad rep count, reserved control bit, or malformed input.
    pub const INVALID_HYPERCALL_INPUT: u16 = 0x3;
    /// Misaligned GPA or a parameter block that spans pages.
    pub const INVALID_ALIGNMENT: u16 = 0x4;
    /// A parameter is out of range.
    pub const INVALID_PARAMETER: u16 = 0x5;
    /// The partition lacks the privilege (CPUID bit) for the call.
    pub const ACCESS_DENIED: u16 = 0x6;
    /// The partition is not in a valid state.
    pub const INVALID_PARTITION_STATE: u16 = 0x7;
    /// The operation is denied.
    pub const OPERATION_DENIED: u16 = 0x8;
    /// Unknown property.
    pub const UNKNOWN_PROPERTY: u16 = 0x9;
    /// Property value out of range.
    pub const PROPERTY_VALUE_OUT_OF_RANGE: u16 = 0xA;
    /// Not enough memory.
    pub const INSUFFICIENT_MEMORY: u16 = 0xB;
    /// Invalid partition id.
    pub const INVALID_PARTITION_ID: u16 = 0xD;
    /// Invalid VP index.
    pub const INVALID_VP_INDEX: u16 = 0xE;
    /// Not found.
    pub const NOT_FOUND: u16 = 0x10;
    /// Invalid port id.
    pub const INVALID_PORT_ID: u16 = 0x11;
    /// Invalid connection id.
    pub const INVALID_CONNECTION_ID: u16 = 0x12;
    /// No message buffers left.
    pub const INSUFFICIENT_BUFFERS: u16 = 0x13;
    /// Not acknowledged.
    pub const NOT_ACKNOWLEDGED: u16 = 0x14;
    /// Invalid VP state.
    pub const INVALID_VP_STATE: u16 = 0x15;
    /// No resources.
    pub const NO_RESOURCES: u16 = 0x1D;
    /// Processor feature not supported.
    pub const PROCESSOR_FEATURE_NOT_SUPPORTED: u16 = 0x20;
    /// Invalid logical processor index.
    pub const INVALID_LP_INDEX: u16 = 0x41;
    /// Invalid register value.
    pub const INVALID_REGISTER_VALUE: u16 = 0x50;
    /// The operation failed.
    pub const OPERATION_FAILED: u16 = 0x71;
    /// Timed out.
    pub const TIME_OUT: u16 = 0x78;
    /// Call pending.
    pub const CALL_PENDING: u16 = 0x79;
    /// VTL already enabled.
    pub const VTL_ALREADY_ENABLED: u16 = 0x86;

    /// Every status above with its name.
    pub const ALL: &[(u16, &str)] = &[
        (SUCCESS, "SUCCESS"),
        (INVALID_HYPERCALL_CODE, "INVALID_HYPERCALL_CODE"),
        (INVALID_HYPERCALL_INPUT, "INVALID_HYPERCALL_INPUT"),
        (INVALID_ALIGNMENT, "INVALID_ALIGNMENT"),
        (INVALID_PARAMETER, "INVALID_PARAMETER"),
        (ACCESS_DENIED, "ACCESS_DENIED"),
        (INVALID_PARTITION_STATE, "INVALID_PARTITION_STATE"),
        (OPERATION_DENIED, "OPERATION_DENIED"),
        (UNKNOWN_PROPERTY, "UNKNOWN_PROPERTY"),
        (PROPERTY_VALUE_OUT_OF_RANGE, "PROPERTY_VALUE_OUT_OF_RANGE"),
        (INSUFFICIENT_MEMORY, "INSUFFICIENT_MEMORY"),
        (INVALID_PARTITION_ID, "INVALID_PARTITION_ID"),
        (INVALID_VP_INDEX, "INVALID_VP_INDEX"),
        (NOT_FOUND, "NOT_FOUND"),
        (INVALID_PORT_ID, "INVALID_PORT_ID"),
        (INVALID_CONNECTION_ID, "INVALID_CONNECTION_ID"),
        (INSUFFICIENT_BUFFERS, "INSUFFICIENT_BUFFERS"),
        (NOT_ACKNOWLEDGED, "NOT_ACKNOWLEDGED"),
        (INVALID_VP_STATE, "INVALID_VP_STATE"),
        (NO_RESOURCES, "NO_RESOURCES"),
        (
            PROCESSOR_FEATURE_NOT_SUPPORTED,
            "PROCESSOR_FEATURE_NOT_SUPPORTED",
        ),
        (INVALID_LP_INDEX, "INVALID_LP_INDEX"),
        (INVALID_REGISTER_VALUE, "INVALID_REGISTER_VALUE"),
        (OPERATION_FAILED, "OPERATION_FAILED"),
        (TIME_OUT, "TIME_OUT"),
        (CALL_PENDING, "CALL_PENDING"),
        (VTL_ALREADY_ENABLED, "VTL_ALREADY_ENABLED"),
    ];

    /// The name of a status, if it is one of [`ALL`].
    pub fn name(status: u16) -> Option<&'static str> {
        ALL.iter().find(|(s, _)| *s == status).map(|(_, n)| *n)
    }
}

/// The status the default [`HypercallServices`] methods return for a feature this backend
/// does not implement: the TLFS meaning of `INVALID_HYPERCALL_CODE` is "this hypervisor does
/// not support the call". Only reachable if a partition offers a feature with no service.
pub const NOT_IMPLEMENTED: u16 = status::INVALID_HYPERCALL_CODE;

/// Flags of the flush hypercalls (`HV_FLUSH_*`).
pub mod flush_flags {
    /// Flush on every VP (the processor mask is ignored).
    pub const ALL_PROCESSORS: u64 = 1 << 0;
    /// Flush every address space (the address space is ignored).
    pub const ALL_VIRTUAL_ADDRESS_SPACES: u64 = 1 << 1;
    /// Only non-global mappings need flushing.
    pub const NON_GLOBAL_MAPPINGS_ONLY: u64 = 1 << 2;
    /// GVA list entries use the extended range format (`03.EDX[14]`).
    pub const USE_EXTENDED_RANGE_FORMAT: u64 = 1 << 3;
}

/// The hypercall input value (control word) in RCX.
///
/// Fields (TLFS): `code[15:0]`, fast bit16, variable header size `[26:17]` (8-byte units), rep
/// count `[43:32]`, rep start index `[59:48]`. KVM treats bits 31:27 (including the TLFS
/// "nested" bit 31), 47:44 and 63:60 as reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Control {
    /// Call code, bits 15:0.
    pub code: u16,
    /// Register-based (fast) calling convention, bit 16.
    pub fast: bool,
    /// Variable header size in 8-byte units, bits 26:17.
    pub var_header_qwords: u16,
    /// Rep count, bits 43:32.
    pub rep_count: u16,
    /// Rep start index, bits 59:48.
    pub rep_start: u16,
    /// The reserved bits of the raw value, in place (0 when none is set).
    pub reserved_bits: u64,
}

const FAST_BIT: u64 = 1 << 16;
const VAR_HEADER_SHIFT: u32 = 17;
const VAR_HEADER_MASK: u64 = 0x3ff;
const REP_COUNT_SHIFT: u32 = 32;
const REP_START_SHIFT: u32 = 48;
const REP_MASK: u64 = 0xfff;
/// Bits 31:27, 47:44 and 63:60.
pub const CONTROL_RESERVED_MASK: u64 = (0x1f << 27) | (0xf << 44) | (0xf << 60);

impl Control {
    /// Splits a raw control word into its fields.
    pub fn decode(raw: u64) -> Self {
        Control {
            code: (raw & 0xffff) as u16,
            fast: raw & FAST_BIT != 0,
            var_header_qwords: ((raw >> VAR_HEADER_SHIFT) & VAR_HEADER_MASK) as u16,
            rep_count: ((raw >> REP_COUNT_SHIFT) & REP_MASK) as u16,
            rep_start: ((raw >> REP_START_SHIFT) & REP_MASK) as u16,
            reserved_bits: raw & CONTROL_RESERVED_MASK,
        }
    }

    /// The raw control word (fields wider than their bit range are truncated).
    pub fn encode(&self) -> u64 {
        u64::from(self.code)
            | if self.fast { FAST_BIT } else { 0 }
            | (u64::from(self.var_header_qwords) & VAR_HEADER_MASK) << VAR_HEADER_SHIFT
            | (u64::from(self.rep_count) & REP_MASK) << REP_COUNT_SHIFT
            | (u64::from(self.rep_start) & REP_MASK) << REP_START_SHIFT
            | self.reserved_bits & CONTROL_RESERVED_MASK
    }

    fn has_rep(&self) -> bool {
        self.rep_count != 0 || self.rep_start != 0
    }
}

/// The hypercall result value for RAX: status in bits 15:0, reps completed in bits 43:32.
pub fn result(status: u16, reps_completed: u16) -> u64 {
    u64::from(status) | (u64::from(reps_completed) & REP_MASK) << REP_COUNT_SHIFT
}

/// What the partition offers, derived by the caller from the CPUID leaves it exposes.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offered {
    /// `0x40000003.EAX[5]`: GUEST_OS_ID and HYPERCALL MSRs. Without it the guest cannot enable
    /// the hypercall page, so the caller never gets here; [`handle`] does not look at it.
    pub hypercall_msrs: bool,
    /// `0x40000003.EBX[4]`: HvPostMessage.
    pub post_messages: bool,
    /// `0x40000003.EBX[5]`: HvSignalEvent.
    pub signal_events: bool,
    /// `0x40000003.EBX[11]`: debugging hypercalls (with SynDbg).
    pub debugging: bool,
    /// `0x40000003.EBX[20]`: extended hypercalls 0x8001..=0x8041.
    pub ext_hypercalls: bool,
    /// `0x40000003.EDX[4]`: XMM fast hypercall input.
    pub xmm_input: bool,
    /// `0x40000004.EAX[2]`: remote TLB flush hypercalls.
    pub remote_flush: bool,
    /// `0x40000004.EAX[10]`: synthetic cluster IPI hypercalls.
    pub cluster_ipi: bool,
    /// `0x40000004.EAX[11]`: the Ex (sparse VP set) forms.
    pub ex_processor_masks: bool,
    /// 0x40000004.EBX: spinlock retries; 0 and 0xFFFFFFFF mean "never notify".
    pub spin_retries: u32,
    /// `0x40000082.EAX[1]`: SynDbg kernel debugging allowed.
    pub syndbg: bool,
}

impl Offered {
    /// Reads the bits from the exposed CPUID leaves, given as (function, [eax, ebx, ecx, edx]).
    /// A missing leaf counts as all zero; when a function appears twice the first one wins.
    pub fn from_cpuid(leaves: &[(u32, [u32; 4])]) -> Self {
        let leaf = |function: u32| {
            leaves
                .iter()
                .find(|(f, _)| *f == function)
                .map_or([0; 4], |(_, regs)| *regs)
        };
        let bit = |value: u32, n: u32| value & (1 << n) != 0;
        let [features_eax, features_ebx, _, features_edx] = leaf(0x4000_0003);
        let [recommendations, spin_retries, _, _] = leaf(0x4000_0004);
        let [syndbg, _, _, _] = leaf(0x4000_0082);
        Offered {
            hypercall_msrs: bit(features_eax, 5),
            post_messages: bit(features_ebx, 4),
            signal_events: bit(features_ebx, 5),
            debugging: bit(features_ebx, 11),
            ext_hypercalls: bit(features_ebx, 20),
            xmm_input: bit(features_edx, 4),
            remote_flush: bit(recommendations, 2),
            cluster_ipi: bit(recommendations, 10),
            ex_processor_masks: bit(recommendations, 11),
            spin_retries,
            syndbg: bit(syndbg, 1),
        }
    }

    /// Whether the guest is told to notify long spin waits (KVM: EBX != 0 and != 0xFFFFFFFF).
    pub fn spin_wait_notify(&self) -> bool {
        self.spin_retries != 0 && self.spin_retries != u32::MAX
    }
}

/// The register state of the calling vCPU at the hypercall (64-bit ABI: RCX control, RDX input
/// GPA or fast arg0, R8 output GPA or fast arg1, XMM0..5 for XMM fast input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HypercallRegs {
    /// Control word.
    pub rcx: u64,
    /// Input GPA (slow) or first input word (fast).
    pub rdx: u64,
    /// Output GPA (slow) or second input word (fast).
    pub r8: u64,
    /// XMM0..XMM5; the caller fills them only when [`needs_xmm`] says so. If they are needed
    /// and absent, the call fails with `INVALID_HYPERCALL_INPUT`.
    pub xmm: Option<[u128; 6]>,
}

/// A set of VP indices (`HV_VP_SET` decoded, or the 64-bit mask of the non-Ex calls).
#[derive(Clone, PartialEq, Eq)]
pub struct VpSet {
    all: bool,
    /// Bank i holds VPs 64i..64i+63 (unpacked: indexed by bank number).
    banks: [u64; 64],
}

impl VpSet {
    /// Every VP of the partition.
    pub fn all() -> Self {
        VpSet {
            all: true,
            banks: [0; 64],
        }
    }

    /// The VPs whose bits are set in `mask` (VPs 0..63).
    pub fn from_mask(mask: u64) -> Self {
        let mut banks = [0; 64];
        banks[0] = mask;
        VpSet { all: false, banks }
    }

    /// Whether this is the "every VP" set.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Whether no VP is in the set.
    pub fn is_empty(&self) -> bool {
        !self.all && self.banks.iter().all(|b| *b == 0)
    }

    /// Whether `vp` is in the set.
    pub fn contains(&self, vp: u32) -> bool {
        if self.all {
            return true;
        }
        let bank = (vp / 64) as usize;
        self.banks
            .get(bank)
            .is_some_and(|b| b & (1 << (vp % 64)) != 0)
    }

    /// The members below `vp_count`, ascending.
    pub fn iter(&self, vp_count: u32) -> impl Iterator<Item = u32> + '_ {
        (0..vp_count).filter(move |vp| self.contains(*vp))
    }
}

impl std::fmt::Debug for VpSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.all {
            return f.write_str("VpSet(all)");
        }
        let banks: Vec<_> = self
            .banks
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != 0)
            .collect();
        f.debug_tuple("VpSet").field(&banks).finish()
    }
}

/// A validated HvFlushVirtualAddress{Space,List}{,Ex} request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushRequest<'a> {
    /// The call code (one of the four flush codes).
    pub code: u16,
    /// Address space (CR3) to flush, unless [`flush_flags::ALL_VIRTUAL_ADDRESS_SPACES`].
    pub address_space: u64,
    /// `HV_FLUSH_*` flags ([`flush_flags`]), passed through unchecked.
    pub flags: u64,
    /// The VPs to flush; never empty (an empty set succeeds without calling the service).
    /// The non-Ex forms give "all" for a zero mask (KVM's WS2012 workaround).
    pub processors: VpSet,
    /// `None` for the Space calls (flush everything); the GVA list for the List calls: each
    /// entry is a page address whose low 12 bits count additional pages (or the extended
    /// range format when `flags` says so). Its length is the rep count.
    pub gvas: Option<&'a [u64]>,
}

/// A validated HvPostMessage input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostMessage {
    /// Target connection.
    pub connection_id: u32,
    /// Message type: non-zero, bit 31 clear.
    pub message_type: u32,
    /// Payload bytes used (at most 240).
    pub payload_size: u32,
    /// The payload area as read (240 bytes; only the first `payload_size` matter).
    pub payload: [u8; 240],
}

impl PostMessage {
    /// The used part of the payload.
    pub fn payload(&self) -> &[u8] {
        let len = usize::try_from(self.payload_size).map_or(0, |n| n.min(self.payload.len()));
        &self.payload[..len]
    }
}

/// The services the VMM implements: this module validates and dispatches, the implementation
/// acts. Only `notify_long_spin_wait` is required; every other method has a default meaning
/// "this backend does not provide it", which is reachable only if the partition offers the
/// feature's CPUID bit (the hvkvm model never does for the user backend today).
///
/// Implementations must return TLFS status codes ([`status`]).
pub trait HypercallServices {
    /// HvCallNotifyLongSpinWait from `vcpu` (only called when 04.EBX allows it).
    fn notify_long_spin_wait(&mut self, vcpu: u32);

    /// A flush request from `vcpu` (`04.EAX[2]`, Ex forms also `04.EAX[11]`). `SUCCESS` reports
    /// every rep completed. Default: [`NOT_IMPLEMENTED`].
    fn flush_virtual_address(&mut self, vcpu: u32, request: &FlushRequest<'_>) -> u16 {
        let _ = (vcpu, request);
        NOT_IMPLEMENTED
    }

    /// A synthetic cluster IPI from `vcpu` with a vector in 16..=255 to a non-empty set
    /// (`04.EAX[10]`, Ex form also `04.EAX[11]`). Default: [`NOT_IMPLEMENTED`].
    fn send_ipi(&mut self, vcpu: u32, vector: u8, targets: &VpSet) -> u16 {
        let _ = (vcpu, vector, targets);
        NOT_IMPLEMENTED
    }

    /// Whether a SynIC exists that could deliver messages and events for `vcpu` (KVM: the
    /// VMM enabled KVM_CAP_HYPERV_SYNIC2). When false, PostMessage and SignalEvent fail with
    /// `INVALID_HYPERCALL_INPUT`, KVM's answer when userspace has no SynIC. Default: false.
    fn synic_active(&self, vcpu: u32) -> bool {
        let _ = vcpu;
        false
    }

    /// HvPostMessage (`03.EBX[4]`, SynIC active). Default: `INVALID_CONNECTION_ID` (no
    /// connection is registered).
    fn post_message(&mut self, vcpu: u32, message: &PostMessage) -> u16 {
        let _ = (vcpu, message);
        status::INVALID_CONNECTION_ID
    }

    /// HvSignalEvent (`03.EBX[5]`, SynIC active); `connection_id` is 24 bits. Default:
    /// `INVALID_CONNECTION_ID`.
    fn signal_event(&mut self, vcpu: u32, connection_id: u32, flag_number: u16) -> u16 {
        let _ = (vcpu, connection_id, flag_number);
        status::INVALID_CONNECTION_ID
    }

    /// HvExtCallQueryCapabilities (`03.EBX[20]`): the capability bitmask the module writes to
    /// the output GPA. Default: `Err(NOT_IMPLEMENTED)`.
    fn ext_query_capabilities(&mut self, vcpu: u32) -> Result<u64, u16> {
        let _ = vcpu;
        Err(NOT_IMPLEMENTED)
    }

    /// A SynDbg hypercall (0x69..=0x6B; `0x40000082.EAX[1]` and `03.EBX[11]` offered). The
    /// implementation reads and writes the GPAs itself. Default: `OPERATION_DENIED`, which is
    /// what KVM answers while the guest's debugger does not use hypercalls; hvkvm has no
    /// debugger attached.
    fn debug_hypercall(&mut self, vcpu: u32, code: u16, input_gpa: u64, output_gpa: u64) -> u16 {
        let _ = (vcpu, code, input_gpa, output_gpa);
        status::OPERATION_DENIED
    }
}

/// What the caller does with the vCPU after [`handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Set RAX to this value and resume after the call.
    Complete(u64),
    /// Inject #UD at the hypercall instruction (CPL > 0, not 64-bit mode, or XMM fast input
    /// without `03.EDX[4]`).
    InvalidOpcode,
}

/// Which CPUID bit a call needs; a closed gate gives `ACCESS_DENIED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    SpinWait,
    PostMessages,
    SignalEvents,
    Flush,
    FlushEx,
    ClusterIpi,
    ClusterIpiEx,
    /// ACCESS_DENIED only when SynDbg is offered without `03.EBX[11]`; without SynDbg the call
    /// is unknown (INVALID_HYPERCALL_CODE), as in KVM.
    Debugging,
    Extended,
    /// Named by the TLFS but not provided to guests (KVM neither): INVALID_HYPERCALL_CODE.
    NotProvided,
}

impl Gate {
    fn open(self, o: &Offered) -> bool {
        match self {
            Gate::SpinWait => o.spin_wait_notify(),
            Gate::PostMessages => o.post_messages,
            Gate::SignalEvents => o.signal_events,
            Gate::Flush => o.remote_flush,
            Gate::FlushEx => o.remote_flush && o.ex_processor_masks,
            Gate::ClusterIpi => o.cluster_ipi,
            Gate::ClusterIpiEx => o.cluster_ipi && o.ex_processor_masks,
            Gate::Debugging => !o.syndbg || o.debugging,
            Gate::Extended => o.ext_hypercalls,
            Gate::NotProvided => true,
        }
    }
}

/// One row of the call table.
#[derive(Debug)]
struct CallInfo {
    codes: RangeInclusive<u16>,
    name: &'static str,
    /// A rep call: rep count > 0 and rep start 0. Otherwise both must be 0.
    rep: bool,
    /// Accepts a variable header (the Ex forms' sparse banks). Otherwise it must be 0.
    var_header: bool,
    /// KVM reads XMM0..5 for the fast form (and #UDs without `03.EDX[4]`).
    xmm: bool,
    gate: Gate,
}

/// Shape flags of a table row: a rep call, a variable header, XMM fast input.
const REP: u8 = 1;
const VAR: u8 = 2;
const XMM: u8 = 4;

const fn call(code: u16, name: &'static str, shape: u8, gate: Gate) -> CallInfo {
    CallInfo {
        codes: code..=code,
        name,
        rep: shape & REP != 0,
        var_header: shape & VAR != 0,
        xmm: shape & XMM != 0,
        gate,
    }
}

/// A simple call for every code in `first..=last`.
const fn range(first: u16, last: u16, name: &'static str, gate: Gate) -> CallInfo {
    CallInfo {
        codes: first..=last,
        ..call(first, name, 0, gate)
    }
}

/// Every call code the module knows: code → (name, shape, gate).
#[rustfmt::skip]
static CALLS: &[CallInfo] = {
    use code::*;
    use Gate::*;
    &[
        call(FLUSH_VIRTUAL_ADDRESS_SPACE, "FlushVirtualAddressSpace", XMM, Flush),
        call(FLUSH_VIRTUAL_ADDRESS_LIST, "FlushVirtualAddressList", REP | XMM, Flush),
        call(NOTIFY_LONG_SPIN_WAIT, "NotifyLongSpinWait", 0, SpinWait),
        call(SEND_SYNTHETIC_CLUSTER_IPI, "SendSyntheticClusterIpi", 0, ClusterIpi),
        call(FLUSH_VIRTUAL_ADDRESS_SPACE_EX, "FlushVirtualAddressSpaceEx", VAR | XMM, FlushEx),
        call(FLUSH_VIRTUAL_ADDRESS_LIST_EX, "FlushVirtualAddressListEx", REP | VAR | XMM, FlushEx),
        call(SEND_SYNTHETIC_CLUSTER_IPI_EX, "SendSyntheticClusterIpiEx", VAR | XMM, ClusterIpiEx),
        call(POST_MESSAGE, "PostMessage", 0, PostMessages),
        call(SIGNAL_EVENT, "SignalEvent", 0, SignalEvents),
        call(POST_DEBUG_DATA, "PostDebugData", 0, Debugging),
        call(RETRIEVE_DEBUG_DATA, "RetrieveDebugData", 0, Debugging),
        call(RESET_DEBUG_SESSION, "ResetDebugSession", 0, Debugging),
        call(FLUSH_GUEST_PHYSICAL_ADDRESS_SPACE, "FlushGuestPhysicalAddressSpace", 0, NotProvided),
        call(FLUSH_GUEST_PHYSICAL_ADDRESS_LIST, "FlushGuestPhysicalAddressList", REP, NotProvided),
        call(SIGNAL_EVENT_DIRECT, "SignalEventDirect", 0, NotProvided),
        call(POST_MESSAGE_DIRECT, "PostMessageDirect", 0, NotProvided),
        call(EXT_QUERY_CAPABILITIES, "ExtQueryCapabilities", 0, Extended),
        range(EXT_QUERY_CAPABILITIES + 1, EXT_LAST, "ExtendedHypercall", Extended),
    ]
};

fn lookup(code: u16) -> Option<&'static CallInfo> {
    CALLS.iter().find(|c| c.codes.contains(&code))
}

/// A readable name for a call code (for reports and logs).
pub fn name(code: u16) -> Cow<'static, str> {
    match lookup(code) {
        Some(c) if c.codes.start() == c.codes.end() => Cow::Borrowed(c.name),
        Some(c) => Cow::Owned(format!("{}({code:#06x})", c.name)),
        None => Cow::Owned(format!("unknown({code:#06x})")),
    }
}

/// A readable name for a status (for reports and logs).
pub fn status_name(status: u16) -> Cow<'static, str> {
    status::name(status).map_or_else(|| Cow::Owned(format!("{status:#06x}")), Cow::Borrowed)
}

/// Whether [`handle`] will read XMM0..5 for this call, so the caller fetches them (an ioctl)
/// only then: a fast call of 0x2/0x3/0x13/0x14/0x15 that passes the gate and reserved-bit
/// checks while `03.EDX[4]` is offered.
pub fn needs_xmm(control: &Control, offered: &Offered) -> bool {
    control.fast
        && offered.xmm_input
        && control.reserved_bits == 0
        && lookup(control.code).is_some_and(|c| c.xmm && c.gate.open(offered))
}

/// Serves one hypercall from `vcpu`.
///
/// `cpl` is the caller's privilege level and `long_mode` whether it runs in 64-bit mode
/// (EFER.LMA and CS.L). `mem` is guest RAM, read and written only through [`Bytes`]. The
/// caller routes a call here only once the guest enabled the hypercall page.
pub fn handle<M: Bytes<GuestAddress> + ?Sized>(
    vcpu: u32,
    cpl: u8,
    long_mode: bool,
    regs: &HypercallRegs,
    offered: &Offered,
    mem: &M,
    services: &mut dyn HypercallServices,
) -> Outcome {
    if cpl != 0 || !long_mode {
        return Outcome::InvalidOpcode;
    }
    let ctl = Control::decode(regs.rcx);
    let info = lookup(ctl.code);
    if info.is_some_and(|c| !c.gate.open(offered)) {
        return Outcome::Complete(result(status::ACCESS_DENIED, 0));
    }
    if ctl.reserved_bits != 0 {
        return Outcome::Complete(result(status::INVALID_HYPERCALL_INPUT, 0));
    }
    let Some(info) = info else {
        return Outcome::Complete(result(status::INVALID_HYPERCALL_CODE, 0));
    };
    if ctl.fast && info.xmm && !offered.xmm_input {
        return Outcome::InvalidOpcode;
    }
    let call = Call {
        vcpu,
        ctl,
        info,
        regs,
        offered,
    };
    let done = match call.ctl.code {
        code::FLUSH_VIRTUAL_ADDRESS_SPACE
        | code::FLUSH_VIRTUAL_ADDRESS_LIST
        | code::FLUSH_VIRTUAL_ADDRESS_SPACE_EX
        | code::FLUSH_VIRTUAL_ADDRESS_LIST_EX => flush(&call, mem, services),
        code::SEND_SYNTHETIC_CLUSTER_IPI | code::SEND_SYNTHETIC_CLUSTER_IPI_EX => {
            send_ipi(&call, mem, services)
        }
        code::NOTIFY_LONG_SPIN_WAIT => spin_wait(&call, services),
        code::POST_MESSAGE => post_message(&call, mem, services),
        code::SIGNAL_EVENT => signal_event(&call, mem, services),
        code::POST_DEBUG_DATA | code::RETRIEVE_DEBUG_DATA | code::RESET_DEBUG_SESSION => {
            debug_call(&call, services)
        }
        code::EXT_QUERY_CAPABILITIES..=code::EXT_LAST => extended(&call, mem, services),
        _ => Err(status::INVALID_HYPERCALL_CODE),
    };
    Outcome::Complete(match done {
        // Every rep or none: a successful call completed all `rep_count` reps (0 for simple
        // calls, which the shape check guarantees).
        Ok(()) => result(status::SUCCESS, ctl.rep_count),
        Err(s) => result(s, 0),
    })
}

/// A failure status, or success.
type CallResult = Result<(), u16>;

fn check(s: u16) -> CallResult {
    if s == status::SUCCESS {
        Ok(())
    } else {
        Err(s)
    }
}

/// One call in progress.
struct Call<'a> {
    vcpu: u32,
    ctl: Control,
    info: &'static CallInfo,
    regs: &'a HypercallRegs,
    offered: &'a Offered,
}

impl Call<'_> {
    /// Rep count/start and variable header as the call's table row allows (TLFS; KVM).
    fn check_shape(&self) -> CallResult {
        let ctl = &self.ctl;
        let rep_ok = if self.info.rep {
            ctl.rep_count > 0 && ctl.rep_start == 0
        } else {
            !ctl.has_rep()
        };
        let var_ok = self.info.var_header || ctl.var_header_qwords == 0;
        if rep_ok && var_ok {
            Ok(())
        } else {
            Err(status::INVALID_HYPERCALL_INPUT)
        }
    }

    /// The input block: `slow_words` words at the input GPA, or the fast registers.
    fn input<M: Bytes<GuestAddress> + ?Sized>(
        &self,
        mem: &M,
        slow_words: usize,
    ) -> Result<Input, u16> {
        if self.ctl.fast {
            Input::from_registers(self.regs, self.info.xmm && self.offered.xmm_input)
        } else {
            Input::from_memory(mem, self.regs.rdx, slow_words)
        }
    }

    fn var_words(&self) -> usize {
        usize::from(self.ctl.var_header_qwords)
    }

    fn rep_words(&self) -> usize {
        if self.info.rep {
            usize::from(self.ctl.rep_count)
        } else {
            0
        }
    }
}

/// Input parameters as little-endian 8-byte words. Slow and fast inputs share one layout:
/// word 0 is at the input GPA or in RDX, word 1 next or in R8, then XMM0 low, XMM0 high, ...
struct Input {
    words: [u64; MAX_INPUT_WORDS],
    len: usize,
}

impl Input {
    fn from_registers(regs: &HypercallRegs, with_xmm: bool) -> Result<Self, u16> {
        let mut input = Input {
            words: [0; MAX_INPUT_WORDS],
            len: 2,
        };
        input.words[0] = regs.rdx;
        input.words[1] = regs.r8;
        if with_xmm {
            let xmm = regs.xmm.as_ref().ok_or(status::INVALID_HYPERCALL_INPUT)?;
            for (pair, x) in input.words[2..XMM_FAST_WORDS].chunks_exact_mut(2).zip(xmm) {
                pair[0] = *x as u64;
                pair[1] = (*x >> 64) as u64;
            }
            input.len = XMM_FAST_WORDS;
        }
        Ok(input)
    }

    fn from_memory<M: Bytes<GuestAddress> + ?Sized>(
        mem: &M,
        gpa: u64,
        words: usize,
    ) -> Result<Self, u16> {
        let bytes = words.checked_mul(8).ok_or(status::INVALID_ALIGNMENT)?;
        check_block(gpa, bytes)?;
        let mut buf = [0u8; PAGE_SIZE as usize];
        let buf = buf.get_mut(..bytes).ok_or(status::INVALID_ALIGNMENT)?;
        mem.read_slice(buf, GuestAddress(gpa))
            .map_err(|_| status::INVALID_HYPERCALL_INPUT)?;
        let mut input = Input {
            words: [0; MAX_INPUT_WORDS],
            len: words,
        };
        for (word, chunk) in input.words.iter_mut().zip(buf.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(chunk);
            *word = u64::from_le_bytes(le);
        }
        Ok(input)
    }

    fn word(&self, i: usize) -> Result<u64, u16> {
        self.slice(i, 1).map(|w| w[0])
    }

    /// `count` words from `start`; short fast input gives INVALID_HYPERCALL_INPUT (KVM).
    fn slice(&self, start: usize, count: usize) -> Result<&[u64], u16> {
        let end = start
            .checked_add(count)
            .ok_or(status::INVALID_HYPERCALL_INPUT)?;
        self.words[..self.len]
            .get(start..end)
            .ok_or(status::INVALID_HYPERCALL_INPUT)
    }
}

/// A parameter block at `gpa` of `bytes`: 8-byte aligned and inside one page (TLFS).
fn check_block(gpa: u64, bytes: usize) -> CallResult {
    let room = PAGE_SIZE - gpa % PAGE_SIZE;
    if gpa % 8 != 0 || u64::try_from(bytes).map_or(true, |b| b > room) {
        Err(status::INVALID_ALIGNMENT)
    } else {
        Ok(())
    }
}

/// `HV_GENERIC_SET_SPARSE_4K` / `HV_GENERIC_SET_ALL`.
const VP_SET_SPARSE: u64 = 0;
const VP_SET_ALL: u64 = 1;

/// Reads the `var_words` packed banks at `at` into a set (KVM: var header size must equal
/// popcount(valid_bank_mask)). Returns the set and the index of the word after the banks.
fn sparse_set(
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
fn flush<M: Bytes<GuestAddress> + ?Sized>(
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
        let all = input.word(2)? != VP_SET_SPARSE;
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
const IPI_VECTORS: RangeInclusive<u32> = 16..=255;

/// HvSendSyntheticClusterIpi{,Ex}.
fn send_ipi<M: Bytes<GuestAddress> + ?Sized>(
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
        let all = input.word(1)? == VP_SET_ALL;
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
fn spin_wait(call: &Call<'_>, services: &mut dyn HypercallServices) -> CallResult {
    call.check_shape()?;
    services.notify_long_spin_wait(call.vcpu);
    Ok(())
}

/// HvCallPostMessage: {u32 connection_id; u32 rsvd; u32 type; u32 size; u8 payload[240]}.
fn post_message<M: Bytes<GuestAddress> + ?Sized>(
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

/// SignalEvent input: connection id `[23:0]`, flag number `[47:32]`; the rest is reserved.
const SIGNAL_CONNECTION_MASK: u64 = 0xff_ffff;
const SIGNAL_FLAG_SHIFT: u32 = 32;
const SIGNAL_RESERVED_MASK: u64 = !(SIGNAL_CONNECTION_MASK | 0xffff << SIGNAL_FLAG_SHIFT);

/// HvCallSignalEvent: fast (RDX) or one word at the input GPA.
fn signal_event<M: Bytes<GuestAddress> + ?Sized>(
    call: &Call<'_>,
    mem: &M,
    services: &mut dyn HypercallServices,
) -> CallResult {
    call.check_shape()?;
    let param = call.input(mem, 1)?.word(0)?;
    if param & SIGNAL_RESERVED_MASK != 0 {
        return Err(status::INVALID_HYPERCALL_INPUT);
    }
    if !services.synic_active(call.vcpu) {
        return Err(status::INVALID_HYPERCALL_INPUT);
    }
    let connection_id = (param & SIGNAL_CONNECTION_MASK) as u32;
    let flag_number = (param >> SIGNAL_FLAG_SHIFT) as u16;
    check(services.signal_event(call.vcpu, connection_id, flag_number))
}

/// HvCallPostDebugData, HvCallRetrieveDebugData, HvCallResetDebugSession (KVM's order).
fn debug_call(call: &Call<'_>, services: &mut dyn HypercallServices) -> CallResult {
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
fn extended<M: Bytes<GuestAddress> + ?Sized>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// RAM is 0..RAM_SIZE; tests put input at IN and output at OUT.
    const RAM_SIZE: u64 = 0x10000;
    const IN: u64 = 0x1000;
    const OUT: u64 = 0x2000;

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)]).unwrap()
    }

    fn put(mem: &GuestMemoryMmap, gpa: u64, words: &[u64]) {
        for (i, w) in (0u64..).zip(words) {
            mem.write_obj(*w, GuestAddress(gpa + 8 * i)).unwrap();
        }
    }

    /// XMM registers holding `halves` (XMM0 low, XMM0 high, XMM1 low, ...).
    fn xmm(halves: &[u64]) -> [u128; 6] {
        let mut regs = [0u128; 6];
        for (i, w) in halves.iter().enumerate() {
            regs[i / 2] |= u128::from(*w) << (64 * (i % 2));
        }
        regs
    }

    /// What the recording services were asked to flush.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Flushed {
        code: u16,
        address_space: u64,
        flags: u64,
        set: VpSet,
        gvas: Option<Vec<u64>>,
    }

    /// Services that behave like KVM where KVM implements a call (flush and IPI succeed),
    /// recording every request.
    #[derive(Default, Debug)]
    struct Kvmish {
        spins: u32,
        flushes: Vec<Flushed>,
        ipis: Vec<(u8, VpSet)>,
        synic: bool,
        messages: Vec<PostMessage>,
        events: Vec<(u32, u16)>,
        capabilities: Option<u64>,
    }

    impl HypercallServices for Kvmish {
        fn notify_long_spin_wait(&mut self, _vcpu: u32) {
            self.spins += 1;
        }
        fn flush_virtual_address(&mut self, _vcpu: u32, r: &FlushRequest<'_>) -> u16 {
            let (code, address_space, flags) = (r.code, r.address_space, r.flags);
            let (set, gvas) = (r.processors.clone(), r.gvas.map(<[u64]>::to_vec));
            self.flushes.push(Flushed {
                code,
                address_space,
                flags,
                set,
                gvas,
            });
            status::SUCCESS
        }
        fn send_ipi(&mut self, _vcpu: u32, vector: u8, targets: &VpSet) -> u16 {
            self.ipis.push((vector, targets.clone()));
            status::SUCCESS
        }
        fn synic_active(&self, _vcpu: u32) -> bool {
            self.synic
        }
        fn post_message(&mut self, _vcpu: u32, m: &PostMessage) -> u16 {
            self.messages.push(m.clone());
            status::SUCCESS
        }
        fn signal_event(&mut self, _vcpu: u32, connection_id: u32, flag: u16) -> u16 {
            self.events.push((connection_id, flag));
            status::SUCCESS
        }
        fn ext_query_capabilities(&mut self, _vcpu: u32) -> Result<u64, u16> {
            self.capabilities.ok_or(NOT_IMPLEMENTED)
        }
    }

    /// Only the required method: every default, as hvkvm's user backend has today.
    #[derive(Default, Debug)]
    struct Minimal {
        spins: u32,
    }

    impl HypercallServices for Minimal {
        fn notify_long_spin_wait(&mut self, _vcpu: u32) {
            self.spins += 1;
        }
    }

    fn ctl(code: u16) -> Control {
        Control {
            code,
            ..Control::default()
        }
    }

    fn fast(code: u16) -> Control {
        Control {
            fast: true,
            ..ctl(code)
        }
    }

    fn reps(code: u16, n: u16) -> Control {
        Control {
            rep_count: n,
            ..ctl(code)
        }
    }

    fn regs(c: Control, rdx: u64, r8: u64) -> HypercallRegs {
        HypercallRegs {
            rcx: c.encode(),
            rdx,
            r8,
            xmm: None,
        }
    }

    /// Issues a call from CPL 0 in 64-bit mode as the VMM would: XMM registers (zero unless
    /// given) are filled only when `needs_xmm` says so.
    fn issue(
        mut r: HypercallRegs,
        offered: Offered,
        mem: &GuestMemoryMmap,
        s: &mut dyn HypercallServices,
    ) -> Outcome {
        if needs_xmm(&Control::decode(r.rcx), &offered) {
            r.xmm = r.xmm.or(Some([0; 6]));
        } else {
            r.xmm = None;
        }
        handle(0, 0, true, &r, &offered, mem, s)
    }

    /// `issue` with RDX = IN and R8 = OUT.
    fn run(
        c: Control,
        o: Offered,
        mem: &GuestMemoryMmap,
        s: &mut dyn HypercallServices,
    ) -> Outcome {
        issue(regs(c, IN, OUT), o, mem, s)
    }

    fn done(status: u16) -> Outcome {
        Outcome::Complete(result(status, 0))
    }

    fn everything() -> Offered {
        Offered {
            hypercall_msrs: true,
            post_messages: true,
            signal_events: true,
            debugging: true,
            ext_hypercalls: true,
            xmm_input: true,
            remote_flush: true,
            cluster_ipi: true,
            ex_processor_masks: true,
            spin_retries: 0xfff,
            syndbg: true,
        }
    }

    #[test]
    fn control_decode_every_field() {
        let raw = 0x1234 | FAST_BIT | 0x2a5 << 17 | 0xabc << 32 | 0x321 << 48;
        let c = Control::decode(raw);
        assert_eq!((c.code, c.fast, c.var_header_qwords), (0x1234, true, 0x2a5));
        assert_eq!(
            (c.rep_count, c.rep_start, c.reserved_bits),
            (0xabc, 0x321, 0)
        );
        assert_eq!(c.encode(), raw);
        // Each field at its maximum, alone.
        assert_eq!(
            Control::decode(0xffff),
            Control {
                code: 0xffff,
                ..Control::default()
            }
        );
        assert_eq!(Control::decode(0x3ff << 17).var_header_qwords, 0x3ff);
        assert_eq!(Control::decode(0xfff << 32).rep_count, 0xfff);
        assert_eq!(Control::decode(0xfff << 48).rep_start, 0xfff);
        assert!(!Control::decode(!FAST_BIT).fast);
        let all = Control::decode(u64::MAX);
        assert_eq!(all.reserved_bits, CONTROL_RESERVED_MASK);
        assert_eq!(all.encode(), u64::MAX);
    }

    #[test]
    fn reserved_bits_are_31_27_47_44_63_60() {
        for bit in 0..64 {
            let reserved = Control::decode(1 << bit).reserved_bits != 0;
            let expected = (27..=31).contains(&bit) || (44..=47).contains(&bit) || bit >= 60;
            assert_eq!(reserved, expected, "bit {bit}");
        }
    }

    #[test]
    fn reserved_bits_give_invalid_input_after_the_gate() {
        let mem = ram();
        let offered = Offered {
            spin_retries: 1,
            ..Offered::default()
        };
        let mut m = Minimal::default();
        for bit in (27..=31).chain(44..=47).chain(60..=63) {
            let with = |code| Control {
                reserved_bits: 1 << bit,
                ..ctl(code)
            };
            let spin = run(with(code::NOTIFY_LONG_SPIN_WAIT), offered, &mem, &mut m);
            assert_eq!(spin, done(status::INVALID_HYPERCALL_INPUT));
            // Unknown code: reserved bits are reported first (KVM's order).
            let unknown = run(with(0xbeef), offered, &mem, &mut m);
            assert_eq!(unknown, done(status::INVALID_HYPERCALL_INPUT));
            // A closed gate is reported before reserved bits.
            let denied = run(with(code::POST_MESSAGE), offered, &mem, &mut m);
            assert_eq!(denied, done(status::ACCESS_DENIED));
        }
        assert_eq!(m.spins, 0);
    }

    #[test]
    fn offered_from_cpuid() {
        let leaves = [
            (
                0x4000_0003,
                [1 << 5, 1 << 4 | 1 << 5 | 1 << 11 | 1 << 20, 0, 1 << 4],
            ),
            (0x4000_0004, [1 << 2 | 1 << 10 | 1 << 11, 0xfff, 0, 0]),
            (0x4000_0082, [1 << 1, 0, 0, 0]),
            (0x4000_0003, [0, 0, 0, 0]), // a duplicate: the first one wins
        ];
        assert_eq!(Offered::from_cpuid(&leaves), everything());
        assert_eq!(Offered::from_cpuid(&[]), Offered::default());
        let one = |function: u32, reg: usize, bit: u32| {
            let mut values = [0; 4];
            values[reg] = 1 << bit;
            Offered::from_cpuid(&[(function, values)])
        };
        assert!(one(0x4000_0003, 0, 5).hypercall_msrs);
        assert!(one(0x4000_0003, 1, 4).post_messages);
        assert!(one(0x4000_0003, 1, 5).signal_events);
        assert!(one(0x4000_0003, 1, 11).debugging);
        assert!(one(0x4000_0003, 1, 20).ext_hypercalls);
        assert!(one(0x4000_0003, 3, 4).xmm_input);
        assert!(one(0x4000_0004, 0, 2).remote_flush);
        assert!(one(0x4000_0004, 0, 10).cluster_ipi);
        assert!(one(0x4000_0004, 0, 11).ex_processor_masks);
        assert!(one(0x4000_0082, 0, 1).syndbg);
        assert_eq!(one(0x4000_0004, 1, 31).spin_retries, 1 << 31);
        assert!(!Offered {
            spin_retries: 0,
            ..everything()
        }
        .spin_wait_notify());
        assert!(!Offered {
            spin_retries: u32::MAX,
            ..everything()
        }
        .spin_wait_notify());
        assert!(Offered {
            spin_retries: 1,
            ..everything()
        }
        .spin_wait_notify());
    }

    #[test]
    fn result_encoding() {
        assert_eq!(result(status::SUCCESS, 0), 0);
        assert_eq!(result(status::INVALID_ALIGNMENT, 0), 4);
        assert_eq!(result(status::SUCCESS, 5), 5 << 32);
        assert_eq!(
            result(status::VTL_ALREADY_ENABLED, 0xfff),
            0x86 | 0xfff << 32
        );
        // Reps beyond 12 bits are truncated, never spilling into reserved bits.
        assert_eq!(result(0, 0xffff), 0xfff << 32);
    }

    /// The hypercall rows of the hyperv_features.c matrix (reference section 4) in its order:
    /// `03.EAX[5]` throughout, the bits each row names added, zeroed input and output pages.
    #[test]
    fn hyperv_features_matrix() {
        let base = Offered {
            hypercall_msrs: true,
            ..Offered::default()
        };
        let post = Offered {
            post_messages: true,
            ..base
        };
        let signal = Offered {
            signal_events: true,
            ..base
        };
        let syndbg = Offered {
            syndbg: true,
            ..base
        };
        let debugging = Offered {
            debugging: true,
            ..syndbg
        };
        let flush = Offered {
            remote_flush: true,
            ..base
        };
        let flush_ex = Offered {
            ex_processor_masks: true,
            ..flush
        };
        let ipi = Offered {
            cluster_ipi: true,
            ..flush_ex
        };
        let spin = Offered {
            spin_retries: 1,
            ..ipi
        };
        let xmm_in = Offered {
            xmm_input: true,
            ..spin
        };
        let ext = Offered {
            ext_hypercalls: true,
            ..xmm_in
        };
        let (ud, s) = (Outcome::InvalidOpcode, done);
        use code::*;
        use status::{ACCESS_DENIED as DENIED, INVALID_HYPERCALL_CODE as BAD_CODE};
        use status::{INVALID_HYPERCALL_INPUT as BAD_INPUT, INVALID_PARAMETER as BAD_PARAM};
        use status::{OPERATION_DENIED as OP_DENIED, SUCCESS as OK};
        #[rustfmt::skip]
        let rows = [
            ("0xbeef", ctl(0xbeef), base, s(BAD_CODE)),
            ("PostMessage", ctl(POST_MESSAGE), base, s(DENIED)),
            ("PostMessage +03.EBX[4]", ctl(POST_MESSAGE), post, s(BAD_INPUT)),
            ("SignalEvent", ctl(SIGNAL_EVENT), base, s(DENIED)),
            ("SignalEvent +03.EBX[5]", ctl(SIGNAL_EVENT), signal, s(BAD_INPUT)),
            ("ResetDebugSession", ctl(RESET_DEBUG_SESSION), base, s(BAD_CODE)),
            ("ResetDebugSession +82.EAX[1]", ctl(RESET_DEBUG_SESSION), syndbg, s(DENIED)),
            ("ResetDebugSession +03.EBX[11]", ctl(RESET_DEBUG_SESSION), debugging, s(OP_DENIED)),
            ("FlushVASpace", ctl(FLUSH_VIRTUAL_ADDRESS_SPACE), base, s(DENIED)),
            ("FlushVASpace +04.EAX[2]", ctl(FLUSH_VIRTUAL_ADDRESS_SPACE), flush, s(OK)),
            ("FlushVASpaceEx", ctl(FLUSH_VIRTUAL_ADDRESS_SPACE_EX), flush, s(DENIED)),
            ("FlushVASpaceEx +04.EAX[11]", ctl(FLUSH_VIRTUAL_ADDRESS_SPACE_EX), flush_ex, s(OK)),
            ("SendIPI", ctl(SEND_SYNTHETIC_CLUSTER_IPI), flush_ex, s(DENIED)),
            ("SendIPI +04.EAX[10], vector 0", ctl(SEND_SYNTHETIC_CLUSTER_IPI), ipi, s(BAD_INPUT)),
            ("SendIPIEx, empty sparse set", ctl(SEND_SYNTHETIC_CLUSTER_IPI_EX), ipi, s(OK)),
            ("NotifyLongSpinWait", ctl(NOTIFY_LONG_SPIN_WAIT), ipi, s(DENIED)),
            ("NotifyLongSpinWait 04.EBX=1", ctl(NOTIFY_LONG_SPIN_WAIT), spin, s(OK)),
            ("FlushVASpace|fast", fast(FLUSH_VIRTUAL_ADDRESS_SPACE), spin, ud),
            ("FlushVASpace|fast +03.EDX[4]", fast(FLUSH_VIRTUAL_ADDRESS_SPACE), xmm_in, s(OK)),
            ("ExtQueryCaps", ctl(EXT_QUERY_CAPABILITIES), xmm_in, s(DENIED)),
            ("ExtQueryCaps +03.EBX[20], fast", fast(EXT_QUERY_CAPABILITIES), ext, s(BAD_PARAM)),
        ];
        let mem = ram();
        for (what, c, offered, expected) in rows {
            assert_eq!(
                run(c, offered, &mem, &mut Kvmish::default()),
                expected,
                "{what}"
            );
        }
    }

    /// Everything offered but only the required service: what each call answers today.
    #[test]
    fn default_services() {
        let mem = ram();
        use code::*;
        let cases = [
            (ctl(FLUSH_VIRTUAL_ADDRESS_SPACE), NOT_IMPLEMENTED),
            (ctl(FLUSH_VIRTUAL_ADDRESS_SPACE_EX), status::SUCCESS), // empty set: no service
            (
                ctl(SEND_SYNTHETIC_CLUSTER_IPI),
                status::INVALID_HYPERCALL_INPUT,
            ), // vector 0
            (ctl(SEND_SYNTHETIC_CLUSTER_IPI_EX), status::SUCCESS),  // empty set: no service
            (ctl(POST_MESSAGE), status::INVALID_HYPERCALL_INPUT),   // no SynIC
            (ctl(SIGNAL_EVENT), status::INVALID_HYPERCALL_INPUT),   // no SynIC
            (ctl(RESET_DEBUG_SESSION), status::OPERATION_DENIED),   // no debugger
            (ctl(EXT_QUERY_CAPABILITIES), NOT_IMPLEMENTED),
            (ctl(NOTIFY_LONG_SPIN_WAIT), status::SUCCESS),
        ];
        let mut m = Minimal::default();
        for (c, expected) in cases {
            assert_eq!(
                run(c, everything(), &mem, &mut m),
                done(expected),
                "{}",
                name(c.code)
            );
        }
        assert_eq!(m.spins, 1);
    }

    #[test]
    fn unknown_and_not_provided_codes() {
        let mem = ram();
        let mut m = Kvmish::default();
        for code in [0x0, 0x1, 0xAF, 0xB0, 0xC0, 0xC1, 0x8000, 0x8042, 0xffff] {
            let answer = run(ctl(code), everything(), &mem, &mut m);
            assert_eq!(answer, done(status::INVALID_HYPERCALL_CODE), "{code:#x}");
        }
        // The rest of the extended range: gated by 03.EBX[20], then unsupported.
        let closed = run(ctl(0x8002), Offered::default(), &mem, &mut m);
        assert_eq!(closed, done(status::ACCESS_DENIED));
        let open = run(ctl(0x8041), everything(), &mem, &mut m);
        assert_eq!(open, done(status::INVALID_HYPERCALL_CODE));
        let fast_ext = run(fast(0x8041), everything(), &mem, &mut m);
        assert_eq!(fast_ext, done(status::INVALID_PARAMETER));
    }

    #[test]
    fn invalid_opcode_cases() {
        let mem = ram();
        let mut m = Minimal::default();
        let spin = regs(ctl(code::NOTIFY_LONG_SPIN_WAIT), IN, OUT);
        for cpl in 1..=3 {
            let answer = handle(0, cpl, true, &spin, &everything(), &mem, &mut m);
            assert_eq!(answer, Outcome::InvalidOpcode);
        }
        let not_64 = handle(0, 0, false, &spin, &everything(), &mem, &mut m);
        assert_eq!(not_64, Outcome::InvalidOpcode);
        assert_eq!(m.spins, 0);
        let no_xmm = Offered {
            xmm_input: false,
            ..everything()
        };
        for code in [0x2, 0x3, 0x13, 0x14, 0x15] {
            let c = Control {
                rep_count: u16::from(code == 0x3 || code == 0x14),
                ..fast(code)
            };
            assert_eq!(
                run(c, no_xmm, &mem, &mut m),
                Outcome::InvalidOpcode,
                "{code:#x}"
            );
            assert!(!needs_xmm(&c, &no_xmm) && needs_xmm(&c, &everything()));
        }
        // A register-only fast call does not need XMM input.
        let c = fast(code::SEND_SYNTHETIC_CLUSTER_IPI);
        assert!(!needs_xmm(&c, &everything()));
        assert_eq!(
            run(c, no_xmm, &mem, &mut m),
            done(status::INVALID_HYPERCALL_INPUT)
        );
        // The gate comes first: ACCESS_DENIED, not #UD.
        let c = fast(code::FLUSH_VIRTUAL_ADDRESS_SPACE);
        assert_eq!(
            run(c, Offered::default(), &mem, &mut m),
            done(status::ACCESS_DENIED)
        );
    }

    #[test]
    fn rep_and_variable_header_rules() {
        let mem = ram();
        let all = everything();
        let bad = done(status::INVALID_HYPERCALL_INPUT);
        let mut m = Kvmish::default();
        // Rep calls: rep count > 0 and rep start 0.
        for code in [
            code::FLUSH_VIRTUAL_ADDRESS_LIST,
            code::FLUSH_VIRTUAL_ADDRESS_LIST_EX,
        ] {
            assert_eq!(run(reps(code, 0), all, &mem, &mut m), bad);
            let restarted = Control {
                rep_start: 1,
                ..reps(code, 2)
            };
            assert_eq!(run(restarted, all, &mem, &mut m), bad);
        }
        // Simple calls: no rep count or rep start.
        for code in [0x2, 0x8, 0xB, 0x13, 0x15, 0x5C, 0x5D, 0x8001] {
            assert_eq!(
                run(reps(code, 1), all, &mem, &mut m),
                bad,
                "{code:#x} rep count"
            );
            let started = Control {
                rep_start: 1,
                ..ctl(code)
            };
            assert_eq!(run(started, all, &mem, &mut m), bad, "{code:#x} rep start");
        }
        // A variable header only on the Ex forms.
        for code in [0x2, 0x3, 0x8, 0xB, 0x5C, 0x5D, 0x8001] {
            let c = Control {
                var_header_qwords: 1,
                rep_count: u16::from(code == 3),
                ..ctl(code)
            };
            assert_eq!(run(c, all, &mem, &mut m), bad, "{code:#x} var header");
        }
        assert_eq!(m.spins, 0);
        assert!(m.flushes.is_empty());
        // Success reports every rep completed.
        put(&mem, IN, &[0, 0, 1, 0x5000, 0x6000, 0x7000]);
        let list = run(reps(code::FLUSH_VIRTUAL_ADDRESS_LIST, 3), all, &mem, &mut m);
        assert_eq!(list, Outcome::Complete(result(status::SUCCESS, 3)));
        let expected = Flushed {
            code: code::FLUSH_VIRTUAL_ADDRESS_LIST,
            address_space: 0,
            flags: 0,
            set: VpSet::from_mask(1),
            gvas: Some(vec![0x5000, 0x6000, 0x7000]),
        };
        assert_eq!(m.flushes, vec![expected]);
    }

    #[test]
    fn alignment_and_page_crossing() {
        let mem = ram();
        let all = everything();
        let mut m = Kvmish {
            synic: true,
            capabilities: Some(7),
            ..Kvmish::default()
        };
        let align = done(status::INVALID_ALIGNMENT);
        use code::*;
        for off in 1..8 {
            for code in [0x2, 0x3, 0xB, 0x13, 0x15, POST_MESSAGE, SIGNAL_EVENT] {
                let c = Control {
                    rep_count: u16::from(code == 0x3),
                    ..ctl(code)
                };
                assert_eq!(issue(regs(c, IN + off, OUT), all, &mem, &mut m), align);
            }
            let query = regs(ctl(EXT_QUERY_CAPABILITIES), IN, OUT + off);
            assert_eq!(issue(query, all, &mem, &mut m), align);
        }
        // FlushVirtualAddressList with 4 GVAs is 56 bytes: it may end exactly at a page end.
        let c = reps(FLUSH_VIRTUAL_ADDRESS_LIST, 4);
        let last = 2 * PAGE_SIZE - 56;
        let fits = issue(regs(c, last, OUT), all, &mem, &mut m);
        assert_eq!(fits, Outcome::Complete(result(status::SUCCESS, 4)));
        assert_eq!(issue(regs(c, last + 8, OUT), all, &mem, &mut m), align);
        // The variable header counts: sparse set with one bank (40 bytes in all).
        let c = Control {
            var_header_qwords: 1,
            ..ctl(FLUSH_VIRTUAL_ADDRESS_SPACE_EX)
        };
        put(&mem, 2 * PAGE_SIZE - 40, &[0, 0, VP_SET_SPARSE, 1, 1 << 3]);
        assert_eq!(
            issue(regs(c, 2 * PAGE_SIZE - 40, OUT), all, &mem, &mut m),
            done(0)
        );
        assert_eq!(
            issue(regs(c, 2 * PAGE_SIZE - 32, OUT), all, &mem, &mut m),
            align
        );
        // PostMessage input is 256 bytes.
        let post = regs(ctl(POST_MESSAGE), 2 * PAGE_SIZE - 248, OUT);
        assert_eq!(issue(post, all, &mem, &mut m), align);
        // GPAs of calls without input or output are ignored.
        let spin = regs(ctl(NOTIFY_LONG_SPIN_WAIT), 3, 5);
        assert_eq!(issue(spin, all, &mem, &mut m), done(status::SUCCESS));
        assert_eq!(m.flushes.len(), 2);
    }

    #[test]
    fn gpa_outside_ram_is_invalid_input() {
        let mem = ram();
        let all = everything();
        let mut m = Kvmish {
            synic: true,
            capabilities: Some(1),
            ..Kvmish::default()
        };
        let bad = done(status::INVALID_HYPERCALL_INPUT);
        for gpa in [RAM_SIZE, 0x10_0000, !0xfff_u64] {
            let gpa = gpa & !7;
            for code in [0x2, 0x13, 0xB, 0x15, 0x5C, 0x5D] {
                let answer = issue(regs(ctl(code), gpa, OUT), all, &mem, &mut m);
                assert_eq!(answer, bad, "{code:#x} at {gpa:#x}");
            }
            let query = regs(ctl(code::EXT_QUERY_CAPABILITIES), IN, gpa);
            assert_eq!(issue(query, all, &mem, &mut m), bad);
        }
        assert!(m.flushes.is_empty() && m.ipis.is_empty() && m.messages.is_empty());
    }

    #[test]
    fn ext_query_capabilities_writes_the_output_gpa() {
        let mem = ram();
        let query = ctl(code::EXT_QUERY_CAPABILITIES);
        mem.write_obj(u64::MAX, GuestAddress(OUT)).unwrap();
        let mut m = Kvmish {
            capabilities: Some(0x1f),
            ..Kvmish::default()
        };
        assert_eq!(
            run(query, everything(), &mem, &mut m),
            done(status::SUCCESS)
        );
        assert_eq!(mem.read_obj::<u64>(GuestAddress(OUT)).unwrap(), 0x1f);
        // Default service: not implemented, and the output is left alone.
        mem.write_obj(u64::MAX, GuestAddress(OUT)).unwrap();
        let answer = run(query, everything(), &mem, &mut Minimal::default());
        assert_eq!(answer, done(NOT_IMPLEMENTED));
        assert_eq!(mem.read_obj::<u64>(GuestAddress(OUT)).unwrap(), u64::MAX);
    }

    #[test]
    fn flush_processor_sets_and_gva_lists() {
        let mem = ram();
        let all = everything();
        let mut m = Kvmish::default();
        // Non-Ex: the ALL_PROCESSORS flag, or a zero mask, mean every VP.
        put(&mem, IN, &[0xc3, flush_flags::ALL_PROCESSORS, 0x6]);
        assert_eq!(run(ctl(0x2), all, &mem, &mut m), done(0));
        put(&mem, IN, &[0, 0, 0]);
        assert_eq!(run(ctl(0x2), all, &mem, &mut m), done(0));
        put(&mem, IN, &[0, 0, 0x6]);
        assert_eq!(run(ctl(0x2), all, &mem, &mut m), done(0));
        assert_eq!(
            (m.flushes[0].address_space, m.flushes[0].gvas.clone()),
            (0xc3, None)
        );
        assert!(m.flushes[0].set.is_all() && m.flushes[1].set.is_all());
        assert_eq!(m.flushes[2].set, VpSet::from_mask(0x6));
        // Ex sparse: banks 0 and 2 hold VPs 1 and 130; two GVAs follow the banks.
        put(
            &mem,
            IN,
            &[0, 0, VP_SET_SPARSE, 0b101, 1 << 1, 1 << 2, 0xa000, 0xb000],
        );
        let c = Control {
            var_header_qwords: 2,
            ..reps(0x14, 2)
        };
        assert_eq!(run(c, all, &mem, &mut m), Outcome::Complete(result(0, 2)));
        let set = &m.flushes[3].set;
        assert_eq!(set.iter(200).collect::<Vec<_>>(), vec![1, 130]);
        assert!(!set.contains(4095) && !set.contains(u32::MAX));
        assert_eq!(m.flushes[3].gvas, Some(vec![0xa000, 0xb000]));
        // The variable header must equal popcount(valid_bank_mask).
        let c = Control {
            var_header_qwords: 1,
            ..reps(0x14, 2)
        };
        assert_eq!(
            run(c, all, &mem, &mut m),
            done(status::INVALID_HYPERCALL_INPUT)
        );
        // Ex with a format other than SPARSE_4K flushes every VP (KVM).
        put(&mem, IN, &[0, 0, 7, 0]);
        assert_eq!(run(ctl(0x13), all, &mem, &mut m), done(0));
        assert!(m.flushes[4].set.is_all());
        // An empty sparse set succeeds without the service.
        put(&mem, IN, &[0, 0, VP_SET_SPARSE, 1, 0]);
        let c = Control {
            var_header_qwords: 1,
            ..ctl(0x13)
        };
        assert_eq!(run(c, all, &mem, &mut m), done(0));
        assert_eq!(m.flushes.len(), 5);
    }

    #[test]
    fn xmm_fast_input_layout() {
        let mem = ram();
        let all = everything();
        let mut m = Kvmish::default();
        // FlushVirtualAddressListEx: RDX address space, R8 flags, XMM0 format and bank mask,
        // then the banks, then the GVAs.
        let c = Control {
            fast: true,
            var_header_qwords: 1,
            ..reps(0x14, 2)
        };
        let r = HypercallRegs {
            xmm: Some(xmm(&[0, 1, 0xff, 0x1000, 0x2000])),
            ..regs(c, 0x77, 0)
        };
        assert_eq!(issue(r, all, &mem, &mut m), Outcome::Complete(result(0, 2)));
        let f = &m.flushes[0];
        assert_eq!((f.address_space, &f.set), (0x77, &VpSet::from_mask(0xff)));
        assert_eq!(f.gvas, Some(vec![0x1000, 0x2000]));
        // More reps than XMM halves left.
        let r = HypercallRegs {
            rcx: Control { rep_count: 10, ..c }.encode(),
            ..r
        };
        assert_eq!(
            issue(r, all, &mem, &mut m),
            done(status::INVALID_HYPERCALL_INPUT)
        );
        // XMM needed but not supplied by the caller: an error, not a panic.
        let bare = HypercallRegs { xmm: None, ..r };
        let answer = handle(0, 0, true, &bare, &all, &mem, &mut m);
        assert_eq!(answer, done(status::INVALID_HYPERCALL_INPUT));
        // SendSyntheticClusterIpiEx: RDX vector, R8 format, XMM0 low bank mask, then banks.
        let c = Control {
            fast: true,
            var_header_qwords: 2,
            ..ctl(0x15)
        };
        let r = HypercallRegs {
            xmm: Some(xmm(&[0b11, 1 << 2, 1 << 1])),
            ..regs(c, 0x30, 0)
        };
        assert_eq!(issue(r, all, &mem, &mut m), done(0));
        assert_eq!(m.ipis[0].0, 0x30);
        assert_eq!(m.ipis[0].1.iter(128).collect::<Vec<_>>(), vec![2, 65]);
    }

    #[test]
    fn ipi_vectors_and_fast_form() {
        let mem = ram();
        let all = everything();
        let mut m = Kvmish::default();
        let send = |rdx: u64, m: &mut Kvmish| {
            issue(
                regs(fast(code::SEND_SYNTHETIC_CLUSTER_IPI), rdx, 0b1),
                all,
                &mem,
                m,
            )
        };
        let bad = done(status::INVALID_HYPERCALL_INPUT);
        for vector in [0, 15, 256, u64::from(u32::MAX)] {
            assert_eq!(send(vector, &mut m), bad, "vector {vector}");
        }
        assert_eq!(send(16, &mut m), done(0));
        assert_eq!(send(255, &mut m), done(0));
        // Fast form: the high half of RDX is reserved.
        assert_eq!(send(1 << 32 | 0x40, &mut m), bad);
        assert_eq!(
            m.ipis,
            vec![(16, VpSet::from_mask(1)), (255, VpSet::from_mask(1))]
        );
        // Slow Ex with format ALL: the vector is checked.
        put(&mem, IN, &[5, VP_SET_ALL, 0]);
        assert_eq!(run(ctl(0x15), all, &mem, &mut m), bad);
        put(&mem, IN, &[0x40, VP_SET_ALL, 0]);
        assert_eq!(run(ctl(0x15), all, &mem, &mut m), done(0));
        assert_eq!(m.ipis[2], (0x40, VpSet::all()));
    }

    #[test]
    fn post_message_and_signal_event() {
        let mem = ram();
        let all = everything();
        let mut m = Kvmish {
            synic: true,
            ..Kvmish::default()
        };
        let post = |conn: u64, kind: u64, size: u64, m: &mut Kvmish| {
            put(
                &mem,
                IN,
                &[conn, kind | size << 32, u64::from_le_bytes(*b"payload!")],
            );
            run(ctl(code::POST_MESSAGE), all, &mem, m)
        };
        let invalid = done(status::INVALID_PARAMETER);
        assert_eq!(post(1, 0, 8, &mut m), invalid);
        assert_eq!(post(1, 0x8000_0001, 8, &mut m), invalid);
        assert_eq!(post(1, 1, 241, &mut m), invalid);
        assert_eq!(post(4, 1, 7, &mut m), done(0));
        assert_eq!(
            (m.messages[0].connection_id, m.messages[0].payload()),
            (4, &b"payload"[..])
        );
        let fast_post = run(fast(code::POST_MESSAGE), all, &mem, &mut m);
        assert_eq!(fast_post, done(status::INVALID_HYPERCALL_INPUT));
        // SignalEvent fast: connection [23:0], flag [47:32], the rest reserved.
        let signal =
            |rdx: u64, m: &mut Kvmish| issue(regs(fast(code::SIGNAL_EVENT), rdx, 0), all, &mem, m);
        assert_eq!(signal(0x12_3456 | 9 << 32, &mut m), done(0));
        assert_eq!(
            signal(1 << 24, &mut m),
            done(status::INVALID_HYPERCALL_INPUT)
        );
        assert_eq!(
            signal(1 << 48, &mut m),
            done(status::INVALID_HYPERCALL_INPUT)
        );
        // Slow: one word at the input GPA.
        put(&mem, IN, &[0x42]);
        assert_eq!(run(ctl(code::SIGNAL_EVENT), all, &mem, &mut m), done(0));
        assert_eq!(m.events, vec![(0x12_3456, 9), (0x42, 0)]);
        // Without a SynIC: INVALID_HYPERCALL_INPUT (KVM), and the services are not asked.
        let mut none = Kvmish::default();
        assert_eq!(
            post(4, 1, 7, &mut none),
            done(status::INVALID_HYPERCALL_INPUT)
        );
        assert_eq!(
            signal(0x42, &mut none),
            done(status::INVALID_HYPERCALL_INPUT)
        );
        assert!(none.messages.is_empty() && none.events.is_empty());
    }

    #[test]
    fn debug_calls_follow_kvm_order() {
        let mem = ram();
        let mut m = Minimal::default();
        let no_syndbg = Offered {
            syndbg: false,
            ..everything()
        };
        for code in [code::POST_DEBUG_DATA, code::RETRIEVE_DEBUG_DATA] {
            // Fast is INVALID_PARAMETER even before the SynDbg check.
            let answer = run(fast(code), no_syndbg, &mem, &mut m);
            assert_eq!(answer, done(status::INVALID_PARAMETER));
            let answer = run(ctl(code), no_syndbg, &mem, &mut m);
            assert_eq!(answer, done(status::INVALID_HYPERCALL_CODE));
            let answer = run(ctl(code), everything(), &mem, &mut m);
            assert_eq!(answer, done(status::OPERATION_DENIED));
        }
        let reset = run(fast(code::RESET_DEBUG_SESSION), everything(), &mem, &mut m);
        assert_eq!(reset, done(status::OPERATION_DENIED));
    }

    #[test]
    fn names_and_table() {
        assert_eq!(name(0x2), "FlushVirtualAddressSpace");
        assert_eq!(name(0x8001), "ExtQueryCapabilities");
        assert_eq!(name(0x8002), "ExtendedHypercall(0x8002)");
        assert_eq!(name(0xbeef), "unknown(0xbeef)");
        assert_eq!(status_name(6), "ACCESS_DENIED");
        assert_eq!(status_name(0x1234), "0x1234");
        // Rows never overlap, so lookup finds each row by its first code.
        for (i, c) in CALLS.iter().enumerate() {
            for other in &CALLS[i + 1..] {
                assert!(c.codes.end() < other.codes.start() || other.codes.end() < c.codes.start());
            }
            assert!(std::ptr::eq(lookup(*c.codes.start()).unwrap(), c));
        }
    }

    /// xorshift64*: deterministic pseudo-random numbers without extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Services that check what reaches them and answer with pseudo-random defined statuses.
    struct Checking {
        rng: Rng,
        synic: bool,
    }

    impl Checking {
        fn new(seed: u64, synic: bool) -> Self {
            Checking {
                rng: Rng(seed | 1),
                synic,
            }
        }
        fn answer(&mut self) -> u16 {
            let i = self.rng.below(status::ALL.len() as u64 + 4) as usize;
            status::ALL.get(i).map_or(status::SUCCESS, |s| s.0)
        }
    }

    impl HypercallServices for Checking {
        fn notify_long_spin_wait(&mut self, _vcpu: u32) {}
        fn flush_virtual_address(&mut self, _vcpu: u32, r: &FlushRequest<'_>) -> u16 {
            assert!(!r.processors.is_empty());
            assert!(r
                .gvas
                .is_none_or(|g| (1..=MAX_INPUT_WORDS).contains(&g.len())));
            self.answer()
        }
        fn send_ipi(&mut self, _vcpu: u32, vector: u8, targets: &VpSet) -> u16 {
            assert!(vector >= 16 && !targets.is_empty());
            self.answer()
        }
        fn synic_active(&self, _vcpu: u32) -> bool {
            self.synic
        }
        fn post_message(&mut self, _vcpu: u32, m: &PostMessage) -> u16 {
            assert!(m.payload_size <= 240 && m.message_type != 0 && m.message_type >> 31 == 0);
            assert_eq!(m.payload().len(), m.payload_size as usize);
            self.answer()
        }
        fn signal_event(&mut self, _vcpu: u32, connection_id: u32, _flag: u16) -> u16 {
            assert!(connection_id <= 0xff_ffff);
            self.answer()
        }
        fn ext_query_capabilities(&mut self, _vcpu: u32) -> Result<u64, u16> {
            match self.answer() {
                0 => Ok(self.rng.next()),
                s => Err(s),
            }
        }
        fn debug_hypercall(&mut self, _vcpu: u32, _code: u16, _in: u64, _out: u64) -> u16 {
            self.answer()
        }
    }

    fn random_control(rng: &mut Rng) -> u64 {
        let codes = [
            2, 3, 8, 0xB, 0x13, 0x14, 0x15, 0x5C, 0x5D, 0x69, 0x6A, 0x6B, 0x8001, 0x8020,
        ];
        let mut raw = rng.next();
        if rng.below(4) != 0 {
            raw = (raw & !0xffff) | codes[rng.below(codes.len() as u64) as usize];
        }
        if rng.below(2) == 0 {
            raw &= !CONTROL_RESERVED_MASK;
        }
        if rng.below(2) == 0 {
            // A small variable header and rep count and no rep start: these get furthest.
            raw &= !(VAR_HEADER_MASK << 17 | REP_MASK << 32 | REP_MASK << 48);
            raw |= rng.below(4) << 17 | rng.below(20) << 32;
        }
        raw
    }

    fn random_gpa(rng: &mut Rng) -> u64 {
        match rng.below(5) {
            0 => rng.next(),
            1 => rng.below(RAM_SIZE) & !7,
            2 => RAM_SIZE.wrapping_sub(8 * rng.below(40)),
            3 => (PAGE_SIZE * rng.below(17)).wrapping_sub(8 * rng.below(4)),
            _ => IN,
        }
    }

    fn random_offered(rng: &mut Rng) -> Offered {
        let spin = [0, 1, u32::MAX][rng.below(3) as usize];
        let mut word = || rng.next() as u32;
        Offered::from_cpuid(&[
            (0x4000_0003, [word(), word(), 0, word()]),
            (0x4000_0004, [word(), spin, 0, 0]),
            (0x4000_0082, [word(), 0, 0, 0]),
        ])
    }

    #[test]
    fn random_hypercalls_never_panic_and_return_defined_statuses() {
        let mem = ram();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut page = [0u8; PAGE_SIZE as usize];
        for round in 0..40_000u32 {
            if round % 64 == 0 {
                for chunk in page.chunks_exact_mut(8) {
                    // Mostly small words, so bank masks and formats hit the interesting cases.
                    let v = if rng.below(2) == 0 {
                        rng.below(4)
                    } else {
                        rng.next()
                    };
                    chunk.copy_from_slice(&v.to_le_bytes());
                }
                mem.write_slice(&page, GuestAddress(IN)).unwrap();
            }
            let offered = random_offered(&mut rng);
            let raw = random_control(&mut rng);
            let control = Control::decode(raw);
            let (rdx, r8) = (random_gpa(&mut rng), random_gpa(&mut rng));
            let xmm = [(); 6].map(|_| u128::from(rng.next()) | u128::from(rng.below(4)) << 64);
            let wanted = needs_xmm(&control, &offered);
            let given = (wanted || rng.below(8) == 0).then_some(xmm);
            let r = HypercallRegs {
                rcx: raw,
                rdx,
                r8,
                xmm: given,
            };
            let cpl = if rng.below(16) == 0 { 3 } else { 0 };
            let long_mode = rng.below(16) != 0;
            let (seed, synic) = (rng.next(), rng.below(2) == 0);
            let mut services = Checking::new(seed, synic);
            let outcome = handle(1, cpl, long_mode, &r, &offered, &mem, &mut services);
            if let Outcome::Complete(rax) = outcome {
                let st = (rax & 0xffff) as u16;
                assert!(
                    status::name(st).is_some(),
                    "undefined status {st:#x} for {raw:#x}"
                );
                assert_eq!(rax & !(0xffff | REP_MASK << 32), 0, "stray bits {rax:#x}");
                let reps_done = ((rax >> 32) & REP_MASK) as u16;
                assert!(reps_done == 0 || (st == 0 && reps_done == control.rep_count));
            }
            if !wanted {
                // needs_xmm is exact: when it says no, the XMM registers change nothing.
                let with = HypercallRegs {
                    xmm: Some(xmm),
                    ..r
                };
                let without = HypercallRegs { xmm: None, ..r };
                let mut a = Checking::new(seed, synic);
                let mut b = Checking::new(seed, synic);
                assert_eq!(
                    handle(1, cpl, long_mode, &with, &offered, &mem, &mut a),
                    handle(1, cpl, long_mode, &without, &offered, &mem, &mut b),
                    "XMM consulted for {raw:#x} although needs_xmm said no"
                );
            }
        }
    }
}
