//! The virtual CPU model: which CPUID each vCPU sees.

pub mod cpuid;
pub mod nested;

pub use cpuid::{CpuModel, CpuidEntry};
