//! # hv-model: which Hyper-V enlightenments a guest is offered
//!
//! hvkvm's single source of truth for the Hyper-V (and KVM paravirt) interface a guest sees,
//! on either backend. It is host-independent logic: the VMM probes the host
//! ([`HostCapabilities`]), the user picks a [`Profile`] and/or a QEMU-style `--hv` list
//! ([`parse_hv_list`]), [`resolve()`] decides every flag with a reason, and [`cpuid_leaves`]
//! gives the hypervisor CPUID leaves to install.
//!
//! ```
//! use hv_model::{cpuid_leaves, parse_hv_list, resolve, Backend, HostCapabilities, HvRequest,
//!                Profile, ResolveOptions};
//!
//! let mut request = parse_hv_list("-hv-evmcs,hv-crash")?;
//! request.profile = Some(Profile::WindowsServerHyperv);
//! let host = HostCapabilities::example_intel();
//! let resolution = resolve(&request, &host, Backend::Kernel, &ResolveOptions::default())?;
//! assert!(resolution.is_on(hv_model::Enlightenment::StimerDirect));
//! assert!(!resolution.is_on(hv_model::Enlightenment::Evmcs));
//! let leaves = cpuid_leaves(&resolution);
//! assert_eq!(leaves[1].eax, 0x3123_7648); // "Hv#1"
//! # Ok::<(), hv_model::ModelError>(())
//! ```
//!
//! Layout: [`flags`] is the one definition table (names, aliases, CPUID bits, dependencies,
//! KVM capabilities); [`config`] and [`parse`] hold what users ask for; [`host`] and
//! [`backend`] what a host can do; [`resolve`](mod@resolve) decides; [`cpuid`] builds
//! leaves; [`profiles`], [`formats`] (QEMU, libvirt, KubeVirt, Proxmox),
//! [`baseline`](mod@baseline) and [`cli`] sit on top.
#![forbid(unsafe_code)]

mod advice;
pub mod backend;
pub mod baseline;
pub mod cli;
pub mod config;
pub mod cpuid;
pub mod error;
pub mod flags;
pub mod formats;
pub mod host;
mod migration;
pub mod parse;
pub mod profiles;
mod render;
pub mod resolve;
pub mod tlfs;

pub use backend::{Backend, USER_BACKEND_HYPERCALL_INTERFACE, USER_BACKEND_IMPLEMENTS};
pub use baseline::{baseline, Baseline, BaselineError, Exclusion, FleetHost};
pub use config::{Coresharing, FlagValue, HvConfig, HvRequest, VendorId};
pub use cpuid::{cpuid_leaves, CpuidLeaf};
pub use error::ModelError;
pub use flags::{Enlightenment, FlagDef, FlagKind, FLAGS};
pub use formats::{export, import, Format, FormatError};
pub use host::{CpuVendor, HostCapabilities, HostLoadError};
pub use parse::parse_hv_list;
pub use profiles::Profile;
pub use resolve::{
    resolve, Decision, GuestSettings, HostChecks, Irqchip, MigrationBlocker, Origin, Resolution,
    ResolveOptions,
};
