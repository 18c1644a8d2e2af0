//! QEMU `-cpu` strings: `-cpu host,hv-relaxed,hv_vapic,hv-spinlocks=0x1fff,kvm=off,...`.
//! Import accepts a bare flag list, a `-cpu` value with a CPU model, or a whole command line
//! (the last `-cpu` wins, as in QEMU); non-Hyper-V CPU options are ignored with a note.

use serde::Serialize;

use crate::config::HvConfig;
use crate::cpuid::{cpuid_leaves, CpuidLeaf};
use crate::error::ModelError;
use crate::formats::{DropList, Dropped, Exported, FormatError, Imported};
use crate::parse::{parse_item, split_items, Item};
use crate::request::HvRequest;
use crate::resolve::Resolution;
use crate::tlfs::Reg;
use crate::version::{Tool, Version};

/// The QEMU release whose guest CPUID was compared with hvkvm's (Debian 12's, in the emulated
/// Intel host, by the `qemu` suite of guest-tests). For other releases
/// [`cpuid_differences`] is what the version table predicts, not a measurement.
pub const CPUID_COMPARED_WITH: Version = Version::new(7, 2);

/// The first QEMU release of the `tsc-frequency` property, the one `-cpu` property hvkvm
/// exports that is not in the flag table (`kvm=` is the table's `kvm` row). It is not newer
/// than any supported target (present in QEMU 5.2), so it is never left out.
pub const TSC_FREQUENCY_SINCE: Version = Version::new(5, 2);

/// Reads a QEMU `-cpu` value or command line.
pub fn import(text: &str) -> Result<Imported, FormatError> {
    let mut notes = Vec::new();
    let config = import_cpu_value(&cpu_value(text), &mut notes)?;
    Ok(Imported {
        request: HvRequest::from_config(config),
        notes,
    })
}

/// The `-cpu` argument of a command line (split like a shell does), or the text itself. Text
/// without `-cpu` is a bare flag list, as `export` writes it, and is taken literally: quotes in
/// it are part of a value (found by fuzz/config_import: `hv-vendor-id='c'y` lost its quotes).
pub(crate) fn cpu_value(text: &str) -> String {
    let words = shell_words(text);
    match words
        .windows(2)
        .rev()
        .find(|w| w[0] == "-cpu" || w[0] == "--cpu")
        .map(|w| w[1].clone())
    {
        Some(value) => value,
        None => text.trim().to_string(),
    }
}

/// Splits a command line into words: whitespace separates, '...' and "..." group, a
/// backslash escapes the next character (outside single quotes), a trailing `\` continues.
pub(crate) fn shell_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '\\') => match chars.next() {
                Some('\n') | None => {}
                Some(next) => {
                    cur.push(next);
                    in_word = true;
                }
            },
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Parses the comma list of a `-cpu` value, skipping the model and non-Hyper-V options.
pub(crate) fn import_cpu_value(
    value: &str,
    notes: &mut Vec<String>,
) -> Result<HvConfig, FormatError> {
    let mut config = HvConfig::new();
    for (i, item) in split_items(value).enumerate() {
        let location = format!("'{item}'");
        match parse_item(item) {
            Ok(Item::Flag(flag, v)) => config
                .apply_text(flag, v.as_deref())
                .map_err(FormatError::setting(location))?,
            Ok(Item::TscFrequency(hz)) => config
                .set_tsc_frequency(hz)
                .map_err(FormatError::setting(location))?,
            Err(ModelError::UnknownFlag { name, .. }) if !looks_like_hyperv(&name) => {
                if i == 0 && !item.contains('=') && !item.starts_with(['+', '-']) {
                    notes.push(format!(
                        "CPU model '{item}' ignored (not a Hyper-V setting)"
                    ));
                } else {
                    notes.push(format!("'{item}' ignored (not a Hyper-V setting)"));
                }
            }
            Err(e) => {
                return Err(FormatError::Setting {
                    location,
                    source: e,
                })
            }
        }
    }
    Ok(config)
}

fn looks_like_hyperv(name: &str) -> bool {
    let n = name.trim_start_matches(['+', '-']).to_ascii_lowercase();
    n.starts_with("hv-") || n.starts_with("hv_")
}

/// The settings QEMU `version` can take, and what it cannot (properties newer than it).
pub(crate) fn for_version(config: &HvConfig, version: Version) -> (HvConfig, DropList) {
    let mut kept = config.clone();
    let mut drops = DropList::default();
    for (flag, on) in config.iter() {
        let since = flag.def().qemu_since;
        if version < since {
            kept.forget(flag);
            // A property QEMU does not have is a feature it never turns on.
            drops.too_new(
                flag,
                on,
                &format!("QEMU {version} has no {flag} property (added in QEMU {since})"),
                true,
            );
        }
    }
    debug_assert!(TSC_FREQUENCY_SINCE <= Tool::Qemu.oldest());
    (kept, drops)
}

/// Writes the flag list to append to `-cpu MODEL,` (also valid for hvkvm's `--hv`) for QEMU
/// `version`; properties it lacks are left out and listed in `dropped`.
pub fn export(config: &HvConfig, version: Version) -> Exported {
    let (kept, drops) = for_version(config, version);
    let mut text = kept.to_hv_list();
    text.push('\n');
    Exported {
        text,
        dropped: drops.into_vec(),
    }
}

/// What QEMU needs to give a guest the same Hyper-V interface as an hvkvm resolution, beside
/// the CPUID hvkvm builds for it: the input of a CPUID comparison between the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QemuEquivalent {
    /// The QEMU release it is written for.
    pub version: Version,
    /// The whole `-cpu` value: `MODEL,flag,flag=value,...`.
    pub cpu: String,
    /// What that QEMU cannot be given; when not empty, its CPUID will differ from `leaves`.
    pub dropped: Vec<Dropped>,
    /// The hypervisor leaves hvkvm gives the guest for the same resolution.
    pub leaves: Vec<CpuidLeaf>,
    /// Where the CPUID a guest sees under QEMU with `-cpu host,vmx=on,<export>` differs from
    /// what it sees under hvkvm (`--cpu host`, kernel backend) on the same host; empty when it
    /// is the same. Checked against real dumps of both by the `qemu` suite in the emulated
    /// Intel host (guest-tests/src/suites/qemu_peer.rs).
    pub cpuid_differences: Vec<CpuidDifference>,
}

/// Bits of one CPUID register that differ between hvkvm's guest and QEMU's, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuidDifference {
    /// The leaf.
    pub leaf: u32,
    /// The register.
    pub register: Reg,
    /// The differing bits.
    pub mask: u32,
    /// Why they differ.
    pub reason: String,
}

/// The `-cpu MODEL,...` value for QEMU `version` and hvkvm's CPUID leaves, for one resolution.
pub fn equivalent(resolution: &Resolution, model: &str, version: Version) -> QemuEquivalent {
    let (kept, drops) = for_version(&resolution.config, version);
    let list = kept.to_hv_list();
    let cpu = if list.is_empty() {
        model.to_string()
    } else {
        format!("{model},{list}")
    };
    let dropped = drops.into_vec();
    QemuEquivalent {
        version,
        cpu,
        cpuid_differences: cpuid_differences(resolution, version),
        dropped,
        leaves: cpuid_leaves(resolution),
    }
}

/// Where QEMU `version`'s guest CPUID differs from hvkvm's for `resolution` (see
/// [`QemuEquivalent::cpuid_differences`]): the bits of every flag that is on for hvkvm but
/// that QEMU `version` has no property for. Such a QEMU never sets the bit, whether the export
/// names the flag (it is left out, see `dropped`) or the flag is one of the KVM paravirt
/// defaults that `-cpu host` and hvkvm both turn on where KVM offers them (`-cpu host` takes
/// only the bits QEMU has a name for). Measured in the emulated Intel host with QEMU 7.2, this
/// is the only difference there is: docs/enlightenments.md, "CPUID compared with QEMU".
pub fn cpuid_differences(resolution: &Resolution, version: Version) -> Vec<CpuidDifference> {
    let mut out: Vec<CpuidDifference> = Vec::new();
    let kvm_leaves = resolution.is_on(crate::flags::Enlightenment::Kvm);
    for d in resolution.decisions.iter().filter(|d| d.on) {
        let def = d.flag.def();
        if version >= def.qemu_since {
            continue;
        }
        let kvm_bits = def.kind == crate::flags::FlagKind::KvmParavirt;
        if kvm_bits && !kvm_leaves {
            continue;
        }
        for b in def.cpuid.iter().chain(def.extra_guest_bits) {
            // KVM's feature leaf moves up by 0x100 beside the Hyper-V leaves.
            let leaf = if kvm_bits && resolution.hyperv_enabled() {
                b.leaf + crate::tlfs::KVM_RELOCATION
            } else {
                b.leaf
            };
            out.push(CpuidDifference {
                leaf,
                register: b.reg,
                mask: b.mask,
                reason: format!(
                    "{flag} is on for hvkvm ({why}); QEMU {version} has no {flag} property \
                     (added in QEMU {since}) and never sets the bit",
                    flag = d.flag.name(),
                    why = d.reason,
                    since = def.qemu_since
                ),
            });
        }
    }
    out
}
