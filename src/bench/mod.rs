//! `hvkvm bench`: benchmarks that run guests.
//!
//! - [`nested_cpuid`]: an L2 CPUID exit under an L1 hypervisor in the guest, classic VMCS
//!   against the enlightened VMCS.

pub mod nested_cpuid;
