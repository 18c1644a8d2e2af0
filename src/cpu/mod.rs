//! The virtual CPU model: which CPUID each vCPU sees.

pub mod cpuid;

pub use cpuid::{CpuModel, CpuidEntry};
