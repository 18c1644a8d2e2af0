//! The hypercall ABI: call codes, status codes, the control word and the result value
//! (TLFS "Hypercall Interface"; reference §2.5).

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

pub(super) const FAST_BIT: u64 = 1 << 16;
pub(super) const VAR_HEADER_SHIFT: u32 = 17;
pub(super) const VAR_HEADER_MASK: u64 = 0x3ff;
pub(super) const REP_COUNT_SHIFT: u32 = 32;
pub(super) const REP_START_SHIFT: u32 = 48;
pub(super) const REP_MASK: u64 = 0xfff;
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

    pub(super) fn has_rep(&self) -> bool {
        self.rep_count != 0 || self.rep_start != 0
    }
}

/// The hypercall result value for RAX: status in bits 15:0, reps completed in bits 43:32.
pub fn result(status: u16, reps_completed: u16) -> u64 {
    u64::from(status) | (u64::from(reps_completed) & REP_MASK) << REP_COUNT_SHIFT
}
