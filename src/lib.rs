//! hvkvm: a KVM virtual machine monitor for guests that expect to run on Hyper-V.
//!
//! # Architecture
//!
//! ```text
//! cli ──▶ vm::VmConfig ──▶ vm::Vm::new ──▶ vm::Vm::run ──▶ vm::VmOutcome
//!                              │                 │
//!               boot (payload, linux, acpi)      └─ one thread per vCPU: vcpu::run_loop
//!               memory (vm-memory, layout)             KVM_RUN ─▶ vcpu::exit ─▶ devices / msr / ucall
//!               cpu (CPUID models)
//!               kvm (thin ioctl layer, probe)
//! ```
//!
//! - [`kvm`] and [`memory`] are the only modules allowed `unsafe`.
//! - [`vcpu::exit`] decides what every exit means and is testable without /dev/kvm.
//! - [`host_quirks`] holds every workaround for hosts that cannot run ordinary guests unaided.
//! - [`hyperv`] connects a VM to the `hv-model` crate, which decides the enlightenments; their
//!   user-space emulation (the user backend) grows there.

pub mod api;
pub mod bench;
pub mod boot;
pub mod cli;
pub mod cpu;
pub mod demo;
pub mod devices;
pub mod host_quirks;
pub mod hyperv;
pub mod kvm;
pub mod memory;
pub(crate) mod ratelimit;
pub mod snapshot;
pub mod vcpu;
pub mod vm;
