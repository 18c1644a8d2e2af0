//! The hypercall ABI (TLFS "Hypercall Interface"; reference §2.5): call codes, `HV_STATUS`
//! values, the control word (RCX) and the result value (RAX), and the fixed parts of the
//! input blocks.
//!
//! Registers of the 64-bit ABI: RCX = control, RDX = input GPA (or first fast input word),
//! R8 = output GPA (or second fast input word), XMM0..5 = further fast input words; result in
//! RAX.

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

/// Control word bit 16: fast (register) calling convention.
pub const FAST_BIT: u64 = 1 << 16;
/// Control word: variable header size `[26:17]`, in 8-byte units.
pub const VAR_HEADER_SHIFT: u32 = 17;
/// Mask of the variable header size (after shifting).
pub const VAR_HEADER_MASK: u64 = 0x3ff;
/// Control word: rep count `[43:32]`; the result's reps completed use the same bits.
pub const REP_COUNT_SHIFT: u32 = 32;
/// Control word: rep start index `[59:48]`.
pub const REP_START_SHIFT: u32 = 48;
/// Mask of the rep count and rep start (after shifting).
pub const REP_MASK: u64 = 0xfff;
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

    /// Whether a rep count or rep start is set.
    pub fn has_rep(&self) -> bool {
        self.rep_count != 0 || self.rep_start != 0
    }
}

/// The hypercall result value for RAX: status in bits 15:0, reps completed in bits 43:32.
pub fn result(status: u16, reps_completed: u16) -> u64 {
    u64::from(status) | (u64::from(reps_completed) & REP_MASK) << REP_COUNT_SHIFT
}

/// Result value: status `[15:0]`.
pub const fn result_status(rax: u64) -> u16 {
    rax as u16
}

/// Result value: reps completed `[43:32]`.
pub const fn result_reps_completed(rax: u64) -> u16 {
    ((rax >> REP_COUNT_SHIFT) & REP_MASK) as u16
}

/// `HV_GENERIC_SET_*`: the format word of an `HV_VP_SET`.
pub mod vp_set {
    /// Sparse 4K banks: `valid_bank_mask` then one u64 per set bit, bank i = VPs 64i..64i+63.
    pub const SPARSE_4K: u64 = 0;
    /// Every VP of the partition (the banks are ignored).
    pub const ALL: u64 = 1;
    /// Most banks a set can name (4096 VPs).
    pub const MAX_BANKS: usize = 64;
}

/// Synthetic IPI vectors must lie in 16..=255.
pub const IPI_VECTOR_MIN: u32 = 16;
/// Highest synthetic IPI vector.
pub const IPI_VECTOR_MAX: u32 = 255;

/// HvSignalEvent input: connection id `[23:0]`.
pub const SIGNAL_EVENT_CONNECTION_MASK: u64 = 0xff_ffff;
/// HvSignalEvent input: flag number `[47:32]`.
pub const SIGNAL_EVENT_FLAG_SHIFT: u32 = 32;
/// HvSignalEvent input: every bit the TLFS reserves.
pub const SIGNAL_EVENT_RESERVED_MASK: u64 =
    !(SIGNAL_EVENT_CONNECTION_MASK | 0xffff << SIGNAL_EVENT_FLAG_SHIFT);

/// HvPostMessage input block: `{u32 connection_id; u32 rsvd; u32 message_type; u32
/// payload_size; u8 payload[240]}` (256 bytes).
pub mod post_message {
    /// Offset of the connection id.
    pub const CONNECTION_ID: usize = 0;
    /// Offset of the message type.
    pub const MESSAGE_TYPE: usize = 8;
    /// Offset of the payload size.
    pub const PAYLOAD_SIZE: usize = 12;
    /// Offset of the payload.
    pub const PAYLOAD: usize = 16;
    /// Size of the whole block.
    pub const SIZE: usize = 256;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_word_round_trips() {
        let c = Control {
            code: code::FLUSH_VIRTUAL_ADDRESS_LIST_EX,
            fast: true,
            var_header_qwords: 3,
            rep_count: 0xabc,
            rep_start: 0x123,
            reserved_bits: 1 << 31,
        };
        assert_eq!(Control::decode(c.encode()), c);
        let rax = result(status::INVALID_PARAMETER, 7);
        assert_eq!(result_status(rax), status::INVALID_PARAMETER);
        assert_eq!(result_reps_completed(rax), 7);
    }

    #[test]
    fn every_status_has_one_name() {
        for (i, (s, n)) in status::ALL.iter().enumerate() {
            assert_eq!(status::name(*s), Some(*n));
            assert!(status::ALL[i + 1..].iter().all(|(t, _)| t != s));
        }
    }
}
