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
//! ## Layers
//!
//! Each module uses only modules of lower layers (a test, `tests/layering.rs`, checks the
//! `use crate::…` paths against this list, so the order cannot silently rot):
//!
//! | layer | modules | what |
//! |---|---|---|
//! | 0 | [`tlfs`], [`version`] | TLFS and KVM ABI constants, CPUID leaf data, KVM capabilities (numbers from kvm-bindings); tool versions |
//! | 1 | [`flags`] | the one definition table: names, aliases, CPUID bits, dependencies, KVM capabilities, the QEMU release of each property |
//! | 2 | [`host`], [`options`] | what a host can do; the knobs of a resolution |
//! | 3 | [`backend`] | who serves the guest, and whether a flag is available there |
//! | 4 | [`error`] | [`ModelError`] |
//! | 5 | [`config`] | explicit per-flag settings |
//! | 6 | [`profiles`] | named starting sets |
//! | 7 | [`request`] | a profile plus explicit settings |
//! | 8 | [`parse`], [`decision`] | `--hv` lists; the decision data resolution fills |
//! | 9 | `migration`, `advice` | blockers and warnings, read from decisions |
//! | 10 | [`resolve`](mod@resolve) | the decision procedure |
//! | 11 | [`cpuid`] | the leaves a resolution gives the guest |
//! | 12 | [`formats`] | QEMU, libvirt, KubeVirt and Proxmox import and version-aware export |
//! | 13 | [`baseline`](mod@baseline) | fleet baselines |
//! | 14 | `render` | text tables |
//! | 15 | [`cli`] | `hvkvm hv …` |
#![forbid(unsafe_code)]

mod advice;
pub mod backend;
pub mod baseline;
pub mod cli;
pub mod config;
pub mod cpuid;
pub mod decision;
pub mod error;
pub mod flags;
pub mod formats;
pub mod host;
mod migration;
pub mod options;
pub mod parse;
pub mod profiles;
mod render;
pub mod request;
pub mod resolve;
pub mod tlfs;
pub mod version;

pub use backend::{Backend, USER_BACKEND_HYPERCALL_INTERFACE, USER_BACKEND_IMPLEMENTS};
pub use baseline::{baseline, Baseline, BaselineError, Exclusion, FleetHost};
pub use config::{Coresharing, FlagValue, HvConfig, VendorId};
pub use cpuid::cpuid_leaves;
pub use decision::{Decision, GuestSettings, MigrationBlocker, Origin};
pub use error::ModelError;
pub use flags::{Enlightenment, FlagDef, FlagKind, UnknownFlag, FLAGS};
pub use formats::{export, import, Format, FormatError};
pub use host::{CpuVendor, HostCapabilities, HostLoadError, KvmCaps};
pub use options::{HostChecks, Irqchip, ResolveOptions};
pub use parse::parse_hv_list;
pub use profiles::Profile;
pub use request::HvRequest;
pub use resolve::{resolve, Resolution};
pub use tlfs::{CpuidLeaf, KvmCap};
pub use version::{Targets, Tool, Version};
