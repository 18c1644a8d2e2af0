//! The hypercall ABI comes from the `hyperv-tlfs` crate (one home for the TLFS, shared with the
//! guest payloads); this module adds what is specific to hvkvm's implementation.

pub use hyperv_tlfs::hypercall::*;

/// The status the default [`super::HypercallServices`] methods return for a feature this
/// backend does not implement: the TLFS meaning of `INVALID_HYPERCALL_CODE` is "this hypervisor
/// does not support the call". Only reachable if a partition offers a feature with no service.
pub const NOT_IMPLEMENTED: u16 = status::INVALID_HYPERCALL_CODE;
