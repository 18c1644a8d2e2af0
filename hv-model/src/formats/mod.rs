//! Import and export of enlightenment sets in the configuration languages users already have:
//! QEMU `-cpu` strings, libvirt domain XML, KubeVirt `spec.domain` YAML and Proxmox VE VM
//! configs. Export never silently loses a setting: what a format cannot express, and what the
//! target version of the tool lacks ([`Targets`]), is listed in [`Exported::dropped`] (and as
//! a comment in the text where the format has comments).
//!
//! Layer 12: depends on the layers below (the QEMU equivalent of a resolution needs
//! [`crate::resolve`] and [`crate::cpuid`]).

use std::fmt;

use serde::Serialize;

use crate::config::HvConfig;
use crate::error::ModelError;
use crate::flags::Enlightenment;
use crate::request::HvRequest;
use crate::version::Targets;

pub mod kubevirt;
pub mod libvirt;
pub mod proxmox;
pub mod qemu;

/// A configuration language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// QEMU `-cpu` flags (also hvkvm's `--hv` syntax).
    Qemu,
    /// libvirt domain XML: `<features><hyperv>`, `<features><kvm>`, `<clock>`, `<panic>`.
    Libvirt,
    /// KubeVirt `spec.domain.features.hyperv` (+ clock timer, kvm.hidden) YAML.
    Kubevirt,
    /// Proxmox VE VM config lines (`ostype:`, `cpu:`, `args:`).
    Proxmox,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 4] = [
        Format::Qemu,
        Format::Libvirt,
        Format::Kubevirt,
        Format::Proxmox,
    ];
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Qemu => "qemu",
            Format::Libvirt => "libvirt",
            Format::Kubevirt => "kubevirt",
            Format::Proxmox => "proxmox",
        })
    }
}

/// A setting a format cannot express.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// The flags (grouped when the reason is shared).
    pub flags: Vec<Enlightenment>,
    /// Whether the fixed TSC frequency (`tsc-frequency=`) is what was dropped.
    pub tsc_frequency: bool,
    /// Why, and the workaround if there is one.
    pub reason: String,
    /// Whether the guest loses something: `false` only when the dropped setting is "off"
    /// and the target cannot turn the feature on anyway (e.g. `kvm-asyncpf-vmexit=off` for a
    /// QEMU without that property). `--strict` fails on lost settings only.
    pub lost: bool,
}

impl Dropped {
    /// The dropped names, `tsc-frequency` included.
    pub fn names(&self) -> Vec<&'static str> {
        self.flags
            .iter()
            .map(|f| f.name())
            .chain(self.tsc_frequency.then_some("tsc-frequency"))
            .collect()
    }
}

/// Export result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exported {
    /// The text in the target format (comments included).
    pub text: String,
    /// What could not be expressed.
    pub dropped: Vec<Dropped>,
}

/// Import result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Imported {
    /// What the input asks for.
    pub request: HvRequest,
    /// Things in the input that were ignored or interpreted (not errors).
    pub notes: Vec<String>,
}

/// Why an input could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Not well-formed XML.
    #[error("malformed XML")]
    Xml(#[source] roxmltree::Error),
    /// Not well-formed YAML.
    #[error("malformed YAML")]
    Yaml(#[source] serde_norway::Error),
    /// Well-formed, but not what the format expects.
    #[error("{0}")]
    Structure(String),
    /// Valid input that asks for no Hyper-V setting at all.
    #[error(
        "no Hyper-V settings found in this {format} input: expected {expected}; \
         the file configures no enlightenment, so there is nothing to import"
    )]
    NoHyperV {
        /// The format.
        format: Format,
        /// What a Hyper-V setting looks like in that format.
        expected: &'static str,
    },
    /// A setting with a bad name or value.
    #[error("invalid Hyper-V setting at {location}")]
    Setting {
        /// Where in the input.
        location: String,
        /// What is wrong.
        #[source]
        source: ModelError,
    },
}

impl FormatError {
    pub(crate) fn setting(location: impl Into<String>) -> impl FnOnce(ModelError) -> FormatError {
        let location = location.into();
        move |source| FormatError::Setting { location, source }
    }
}

/// Reads a configuration in `format`. Input that asks for no Hyper-V setting at all (a QEMU
/// command line without `hv-*` flags, a Proxmox config for a Linux guest, ...) is an error,
/// [`FormatError::NoHyperV`], so that importing the wrong file is not mistaken for success.
pub fn import(format: Format, text: &str) -> Result<Imported, FormatError> {
    let imported = match format {
        Format::Qemu => qemu::import(text),
        Format::Libvirt => libvirt::import(text),
        Format::Kubevirt => kubevirt::import(text),
        Format::Proxmox => proxmox::import(text),
    }?;
    if imported.request.is_empty() {
        let expected = match format {
            Format::Qemu => "hv-* flags or kvm=off in the -cpu value (e.g. -cpu host,hv-relaxed)",
            Format::Libvirt => "<features><hyperv> with at least one feature",
            Format::Kubevirt => "spec.domain.features.hyperv with at least one feature",
            Format::Proxmox => {
                "a Windows ostype (e.g. ostype: win11), hv flags in cpu: flags=, or args: -cpu \
                 with hv-* flags"
            }
        };
        return Err(FormatError::NoHyperV { format, expected });
    }
    Ok(imported)
}

/// Writes explicit settings in `format`, for the target versions in `targets` (QEMU for the
/// `qemu` and `proxmox` formats, libvirt and KubeVirt for theirs).
pub fn export(format: Format, config: &HvConfig, targets: &Targets) -> Exported {
    match format {
        Format::Qemu => qemu::export(config, targets.qemu),
        Format::Libvirt => libvirt::export(config, targets.libvirt),
        Format::Kubevirt => kubevirt::export(config, targets.kubevirt),
        Format::Proxmox => proxmox::export(config, targets.qemu),
    }
}

/// Collects flags a format cannot express, grouped by reason.
#[derive(Debug, Default)]
pub(crate) struct DropList(Vec<Dropped>);

impl DropList {
    /// A setting the guest loses.
    pub(crate) fn add(&mut self, flag: Enlightenment, reason: &str) {
        self.push(flag, reason, true);
    }

    /// An "off" the target has anyway.
    pub(crate) fn add_harmless(&mut self, flag: Enlightenment, reason: &str) {
        self.push(flag, reason, false);
    }

    fn push(&mut self, flag: Enlightenment, reason: &str, lost: bool) {
        match self
            .0
            .iter_mut()
            .find(|d| d.reason == reason && d.lost == lost)
        {
            Some(d) => d.flags.push(flag),
            None => self.0.push(Dropped {
                flags: vec![flag],
                tsc_frequency: false,
                reason: reason.to_string(),
                lost,
            }),
        }
    }

    pub(crate) fn add_tsc_frequency(&mut self, reason: &str) {
        self.0.push(Dropped {
            flags: Vec::new(),
            tsc_frequency: true,
            reason: reason.to_string(),
            lost: true,
        });
    }

    /// A flag whose element or property is newer than the target: "on" is lost, "off" is
    /// what the target has anyway when `off_is_default` (the feature defaults to off there).
    pub(crate) fn too_new(
        &mut self,
        flag: Enlightenment,
        on: bool,
        what: &str,
        off_is_default: bool,
    ) {
        if on {
            self.add(flag, &format!("{what}; the guest does not get it"));
        } else if off_is_default {
            self.add_harmless(flag, &format!("{what}, so it is off there anyway"));
        } else {
            self.add(
                flag,
                &format!("{what}, so it cannot be pinned off: the CPU model decides"),
            );
        }
    }

    /// One comment line per group, with the given comment prefix.
    pub(crate) fn comments(&self, prefix: &str, suffix: &str) -> String {
        self.0
            .iter()
            .map(|d| {
                format!(
                    "{prefix}hvkvm: left out: {} ({}){suffix}\n",
                    d.names().join(","),
                    d.reason
                )
            })
            .collect()
    }

    pub(crate) fn into_vec(self) -> Vec<Dropped> {
        self.0
    }
}
