//! The Hyper-V Top Level Functional Specification (TLFS) as Rust definitions: one home for
//! every number and layout hvkvm and its guest payloads share.
//!
//! - [`msr`]: synthetic MSR indices, their bit fields, and readable names.
//! - [`cpuid`]: the hypervisor CPUID leaves and the privilege, feature and recommendation bits.
//! - [`hypercall`]: call codes, `HV_STATUS` values, the control word and the result value,
//!   flush flags, VP-set formats, and the fixed parts of the input blocks.
//! - [`synic`]: the SynIC message page (`HV_MESSAGE` slots), the event-flags page, SINT and
//!   SCONTROL bits, the timer-expired message.
//! - [`stimer`]: synthetic timer configuration bits.
//! - [`tsc_page`]: the reference TSC page and the guest's read formula.
//!
//! Layouts are `#[repr(C)]` structs whose size and member offsets are compile-time assertions
//! against the TLFS values (as `evmcs-layout` does for the eVMCS), with little-endian
//! `from_bytes`/`to_bytes` so the VMM can copy them through vm-memory without `unsafe` and
//! without references into guest memory.
//!
//! `#![no_std]`, no `unsafe`, no allocation, no floating point: the freestanding guest payloads
//! (SSE disabled) build it as well as the host.
//!
//! Sources: TLFS `feature-discovery.md`, `hypercall-interface.md`, `datatypes/hv_message.md`,
//! `datatypes/hv_vp_set.md`, the SynIC and timer chapters; Linux `include/hyperv/hvgdk_mini.h`.

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cpuid;
pub mod hypercall;
mod le;
pub mod msr;
pub mod stimer;
pub mod synic;
pub mod tsc_page;

/// Size of a guest page: every overlay page (hypercall, TSC, SIMP, SIEFP, VP assist) is one.
pub const PAGE_SIZE: u64 = 4096;
/// The enable bit of the overlay-page MSRs (HYPERCALL, REFERENCE_TSC, VP_ASSIST_PAGE, SIMP,
/// SIEFP).
pub const PAGE_ENABLE: u64 = 1;
/// The GPA bits of an overlay-page MSR.
pub const PAGE_ADDRESS_MASK: u64 = !0xfff;

/// The GPA an overlay-page MSR value names, when its enable bit is set.
pub const fn overlay_page_gpa(msr_value: u64) -> Option<u64> {
    if msr_value & PAGE_ENABLE == 0 {
        None
    } else {
        Some(msr_value & PAGE_ADDRESS_MASK)
    }
}
