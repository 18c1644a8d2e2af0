//! Proxmox VE VM configs (`/etc/pve/qemu-server/<vmid>.conf`).
//!
//! Proxmox builds the Hyper-V flags itself from `ostype:` and the machine version
//! (qemu-server `CPUConfig.pm::get_hyperv_enlightenments()`), lets `cpu:` add `hv-tlbflush`,
//! `hv-evmcs` (via `flags=`), `hidden=1` and `hv-vendor-id=`, and anything else needs a raw
//! `args: -cpu ...`, which replaces Proxmox's whole `-cpu` (model and flags included).
//! Import models all three; export writes `args: -cpu host,...` because only that can carry
//! every flag.

use crate::config::HvConfig;
use crate::flags::Enlightenment as E;
use crate::formats::qemu::{cpu_value, for_version, import_cpu_value, shell_words};
use crate::formats::{Exported, FormatError, Imported};
use crate::request::HvRequest;
use crate::version::Version;

/// Reads the main section of a Proxmox VM config.
pub fn import(text: &str) -> Result<Imported, FormatError> {
    let lines = main_section(text)?;
    let get = |key: &str| lines.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let mut notes = Vec::new();

    if let Some(args) = get("args") {
        if shell_words(args).iter().any(|t| t == "-cpu") {
            notes.push(
                "args: -cpu replaces Proxmox's own -cpu; cpu: and ostype: do not add flags".into(),
            );
            let config = import_cpu_value(&cpu_value(args), &mut notes)?;
            return Ok(Imported {
                request: HvRequest::from_config(config),
                notes,
            });
        }
    }

    let mut config = HvConfig::new();
    let winversion = get("ostype").map_or(0, windows_version);
    let machine = get("machine").and_then(machine_version).unwrap_or(LATEST);
    let ovmf = get("bios") == Some("ovmf");
    let gpu_passthrough = lines.iter().any(|(k, v)| {
        k.starts_with("hostpci") && (v.contains("x-vga=1") || v.contains("x-vga=on"))
    });
    let cpu = get("cpu")
        .map(parse_cpu_line)
        .transpose()?
        .unwrap_or_default();

    if winversion >= 6 && !(ovmf && winversion < 8) {
        let spinlocks = if machine >= (2, 3) {
            "0x1fff"
        } else {
            "0xffff"
        };
        config
            .apply_text(E::Spinlocks, Some(spinlocks))
            .map_err(FormatError::setting("ostype"))?;
        let mut on_if = |cond: bool, flags: &[E]| -> Result<(), FormatError> {
            if cond {
                for f in flags {
                    config.enable(*f).map_err(FormatError::setting("ostype"))?;
                }
            }
            Ok(())
        };
        on_if(machine >= (2, 3), &[E::Vapic, E::Time])?;
        on_if(machine >= (2, 6), &[E::Reset, E::Vpindex, E::Runtime])?;
        on_if(winversion >= 7, &[E::Relaxed])?;
        on_if(
            winversion >= 7 && machine >= (2, 12),
            &[E::Synic, E::Stimer],
        )?;
        on_if(winversion >= 7 && machine >= (3, 1), &[E::Ipi])?;
        if winversion >= 11 {
            notes.push(
                "Proxmox VE 9.2+ also adds hv-evmcs for ostype win11 on Intel hosts with machine \
                 >= 11.0+pve2; add it with --hv hv-evmcs when that applies"
                    .into(),
            );
        }
        if gpu_passthrough && cpu.vendor.is_none() {
            notes.push("GPU passthrough (x-vga): Proxmox sets hv-vendor-id=proxmox".into());
            config
                .apply_text(E::VendorId, Some("proxmox"))
                .map_err(FormatError::setting("hostpci"))?;
        }
    } else if winversion > 0 {
        notes.push("Proxmox adds no Hyper-V flags for this ostype/bios combination".into());
    } else {
        notes.push("no Windows ostype: Proxmox adds no Hyper-V flags".into());
    }
    for (flag, on) in cpu.flags {
        if on {
            config
                .enable(flag)
                .map_err(FormatError::setting("cpu: flags"))?;
        } else {
            config.disable(flag);
        }
    }
    if let Some(vendor) = cpu.vendor {
        config
            .apply_text(E::VendorId, Some(vendor))
            .map_err(FormatError::setting("cpu: hv-vendor-id"))?;
    }
    if cpu.hidden {
        config.disable(E::Kvm);
    }
    notes.extend(cpu.notes);
    Ok(Imported {
        request: HvRequest::from_config(config),
        notes,
    })
}

/// The newest machine version Proxmox gates on, for configs without `machine:`.
const LATEST: (u32, u32) = (u32::MAX, 0);

/// `key: value` pairs before the first `[snapshot]` section; comments (the VM notes) skipped.
fn main_section(text: &str) -> Result<Vec<(&str, &str)>, FormatError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            break;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(':').ok_or_else(|| {
            FormatError::Structure(format!(
                "line {}: expected 'key: value', found '{line}'",
                i + 1
            ))
        })?;
        out.push((key.trim(), value.trim()));
    }
    if out.is_empty() {
        return Err(FormatError::Structure(
            "empty Proxmox config: expected lines such as 'ostype: win11'".into(),
        ));
    }
    Ok(out)
}

/// qemu-server `windows_version()`: wxp/w2k/w2k3 → 5, w2k8/wvista → 6, winN → N.
fn windows_version(ostype: &str) -> u32 {
    match ostype {
        "wxp" | "w2k" | "w2k3" => 5,
        "w2k8" | "wvista" => 6,
        other => other
            .strip_prefix("win")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    }
}

/// `pc-q35-8.1+pve0`, `pc-i440fx-2.12` → (major, minor); `q35`/`pc` → latest.
fn machine_version(machine: &str) -> Option<(u32, u32)> {
    let base = machine.split(',').next()?.split('+').next()?;
    let version = base.rsplit('-').next()?;
    let (major, minor) = version.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[derive(Debug, Default)]
struct CpuLine<'a> {
    flags: Vec<(E, bool)>,
    vendor: Option<&'a str>,
    hidden: bool,
    notes: Vec<String>,
}

/// `cpu: [cputype=]<model>[,flags=+a;-b][,hidden=1][,hv-vendor-id=X]`.
fn parse_cpu_line(value: &str) -> Result<CpuLine<'_>, FormatError> {
    let mut cpu = CpuLine::default();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("flags", list)) => {
                for f in list.split(';').map(str::trim).filter(|f| !f.is_empty()) {
                    let (on, name) = match (f.strip_prefix('+'), f.strip_prefix('-')) {
                        (Some(n), _) => (true, n),
                        (_, Some(n)) => (false, n),
                        _ => (true, f),
                    };
                    match name {
                        "hv-tlbflush" => cpu.flags.push((E::Tlbflush, on)),
                        "hv-evmcs" => cpu.flags.push((E::Evmcs, on)),
                        other => cpu.notes.push(format!(
                            "cpu flag '{other}' ignored (not a Hyper-V setting)"
                        )),
                    }
                }
            }
            Some(("hidden", v)) => cpu.hidden = matches!(v, "1" | "on" | "yes" | "true"),
            Some(("hv-vendor-id", v)) => cpu.vendor = Some(v),
            Some(("cputype", _)) | None => {}
            Some((other, _)) => cpu.notes.push(format!("cpu option '{other}' ignored")),
        }
    }
    Ok(cpu)
}

/// Writes `args: -cpu host,...` (replace `host` with the CPU model you use) for the QEMU
/// `version` Proxmox runs (`pveversion -v` lists it as pve-qemu-kvm).
pub fn export(config: &HvConfig, version: Version) -> Exported {
    let (kept, drops) = for_version(config, version);
    let value = format!("host,{}", kept.to_hv_list());
    // Proxmox splits args: like a shell; quote the value when the vendor id has characters a
    // shell would interpret (spaces, quotes, backslashes).
    let value = if value.contains([' ', '\'', '"', '\\']) {
        format!("'{}'", value.replace('\'', "'\\''"))
    } else {
        value
    };
    let mut text = drops.comments("# ", "");
    text.push_str(&format!(
        "# hvkvm: 'args: -cpu' replaces the -cpu Proxmox builds from cpu: and ostype:; replace \
         'host' with your CPU model if needed\nargs: -cpu {value}\n"
    ));
    Exported {
        text,
        dropped: drops.into_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_cpu_flags_are_ignored_not_fatal() {
        let imported = import("ostype: l26\ncpu: host,flags=é;-hv-évmcs;+hv-tlbflush\n").unwrap();
        assert_eq!(imported.request.overrides.state(E::Tlbflush), Some(true));
        assert!(imported.notes.iter().any(|n| n.contains('é')));
    }

    #[test]
    fn machine_versions_parse() {
        assert_eq!(machine_version("pc-q35-8.1+pve0"), Some((8, 1)));
        assert_eq!(machine_version("pc-i440fx-2.12"), Some((2, 12)));
        assert_eq!(machine_version("q35"), None);
    }

    #[test]
    fn ostype_win11_gives_the_automatic_set() {
        let imported =
            import("ostype: win11\ncpu: host,flags=+hv-tlbflush;+aes,hidden=1\n").unwrap();
        let c = &imported.request.overrides;
        for f in [
            E::Relaxed,
            E::Vapic,
            E::Time,
            E::Vpindex,
            E::Runtime,
            E::Reset,
            E::Synic,
            E::Stimer,
            E::Ipi,
            E::Tlbflush,
        ] {
            assert_eq!(c.state(f), Some(true), "{f}");
        }
        assert_eq!(c.spinlocks(), Some(0x1fff));
        assert_eq!(c.state(E::Kvm), Some(false));
        assert_eq!(c.state(E::Evmcs), None);
    }

    #[test]
    fn old_machine_types_get_fewer_flags() {
        let imported = import("ostype: win10\nmachine: pc-i440fx-2.5\n").unwrap();
        let c = &imported.request.overrides;
        assert_eq!(c.state(E::Vpindex), None);
        assert_eq!(c.state(E::Synic), None);
        assert_eq!(c.state(E::Vapic), Some(true));
    }
}
