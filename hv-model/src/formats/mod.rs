//! Import and export of enlightenment sets in the configuration languages users already have:
//! QEMU `-cpu` strings, libvirt domain XML, KubeVirt `spec.domain` YAML and Proxmox VE VM
//! configs. Export never silently loses a setting: what a format cannot express is listed in
//! [`Exported::dropped`] (and as a comment in the text).

use std::fmt;

use serde::Serialize;

use crate::config::HvConfig;
use crate::error::ModelError;
use crate::flags::Enlightenment;
use crate::request::HvRequest;

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

/// Reads a configuration in `format`.
pub fn import(format: Format, text: &str) -> Result<Imported, FormatError> {
    match format {
        Format::Qemu => qemu::import(text),
        Format::Libvirt => libvirt::import(text),
        Format::Kubevirt => kubevirt::import(text),
        Format::Proxmox => proxmox::import(text),
    }
}

/// Writes explicit settings in `format`.
pub fn export(format: Format, config: &HvConfig) -> Exported {
    match format {
        Format::Qemu => qemu::export(config),
        Format::Libvirt => libvirt::export(config),
        Format::Kubevirt => kubevirt::export(config),
        Format::Proxmox => proxmox::export(config),
    }
}

/// Collects flags a format cannot express, grouped by reason.
#[derive(Debug, Default)]
pub(crate) struct DropList(Vec<Dropped>);

impl DropList {
    pub(crate) fn add(&mut self, flag: Enlightenment, reason: &str) {
        match self.0.iter_mut().find(|d| d.reason == reason) {
            Some(d) => d.flags.push(flag),
            None => self.0.push(Dropped {
                flags: vec![flag],
                tsc_frequency: false,
                reason: reason.to_string(),
            }),
        }
    }

    pub(crate) fn add_tsc_frequency(&mut self, reason: &str) {
        self.0.push(Dropped {
            flags: Vec::new(),
            tsc_frequency: true,
            reason: reason.to_string(),
        });
    }

    /// One comment line per group, with the given comment prefix.
    pub(crate) fn comments(&self, prefix: &str, suffix: &str) -> String {
        self.0
            .iter()
            .map(|d| {
                let mut names: Vec<&str> = d.flags.iter().map(|f| f.name()).collect();
                if d.tsc_frequency {
                    names.push("tsc-frequency");
                }
                format!(
                    "{prefix}hvkvm: not expressible here: {} ({}){suffix}\n",
                    names.join(","),
                    d.reason
                )
            })
            .collect()
    }

    pub(crate) fn into_vec(self) -> Vec<Dropped> {
        self.0
    }
}
