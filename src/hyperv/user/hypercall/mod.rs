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
pub use hyperv_tlfs::PAGE_SIZE;

/// Most input words a call can carry: one page of slow input.
const MAX_INPUT_WORDS: usize = (PAGE_SIZE / 8) as usize;

/// Words of fast input: RDX, R8 and the two halves of XMM0..XMM5 (112 bytes).
const XMM_FAST_WORDS: usize = 14;

mod abi;
mod calls;

pub use abi::*;
use calls::*;

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
        use hyperv_tlfs::cpuid::{privilege, privilege_ebx, recommendation as rec, *};
        let [features_eax, features_ebx, _, features_edx] = leaf(LEAF_FEATURES);
        let [recommendations, spin_retries, _, _] = leaf(LEAF_RECOMMENDATIONS);
        let [syndbg, _, _, _] = leaf(LEAF_SYNDBG_PLATFORM);
        Offered {
            hypercall_msrs: features_eax & privilege::HYPERCALL_MSRS != 0,
            post_messages: features_ebx & privilege_ebx::POST_MESSAGES != 0,
            signal_events: features_ebx & privilege_ebx::SIGNAL_EVENTS != 0,
            debugging: features_ebx & privilege_ebx::DEBUGGING != 0,
            ext_hypercalls: features_ebx & privilege_ebx::EXTENDED_HYPERCALLS != 0,
            xmm_input: features_edx & feature::XMM_INPUT != 0,
            remote_flush: recommendations & rec::REMOTE_FLUSH != 0,
            cluster_ipi: recommendations & rec::CLUSTER_IPI != 0,
            ex_processor_masks: recommendations & rec::EX_PROCESSOR_MASKS != 0,
            spin_retries,
            syndbg: syndbg & SYNDBG_ALLOW_KERNEL_DEBUGGING != 0,
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

/// Number of rows [`call_row`] can return: one per known call, one for unknown codes.
pub const CALL_ROWS: usize = CALLS.len() + 1;
/// Number of rows [`status_row`] can return: one per defined status, one for the rest.
pub const STATUS_ROWS: usize = status::ALL.len() + 1;

/// The row of `code` in the call table (the last row for unknown codes): a dense index for
/// counting calls on the exit path without allocating. Extended codes share a row.
pub fn call_row(code: u16) -> usize {
    CALLS
        .iter()
        .position(|c| c.codes.contains(&code))
        .unwrap_or(CALLS.len())
}

/// The name of a [`call_row`].
pub fn call_row_name(row: usize) -> &'static str {
    CALLS.get(row).map_or("unknown", |c| c.name)
}

/// The row of `status` among the defined statuses (the last row for others).
pub fn status_row(status: u16) -> usize {
    status::ALL
        .iter()
        .position(|(s, _)| *s == status)
        .unwrap_or(status::ALL.len())
}

/// The name of a [`status_row`].
pub fn status_row_name(row: usize) -> &'static str {
    status::ALL.get(row).map_or("other", |(_, n)| n)
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

#[cfg(test)]
mod tests;
