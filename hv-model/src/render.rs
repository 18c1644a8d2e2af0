//! Plain-text tables for the CLI (`explain`, `baseline`, `flags`, `profiles`).

use std::fmt::Write as _;

use crate::backend::{Backend, USER_BACKEND_IMPLEMENTS};
use crate::baseline::Baseline;
use crate::cpuid::CpuidLeaf;
use crate::flags::{FlagKind, FLAGS};
use crate::formats::qemu::{QemuEquivalent, CPUID_COMPARED_WITH};
use crate::resolve::Resolution;

const SECTIONS: [(FlagKind, &str); 4] = [
    (FlagKind::Enlightenment, "Hyper-V enlightenments"),
    (FlagKind::Supplementary, "Supplementary"),
    (FlagKind::Identity, "Identification"),
    (FlagKind::KvmParavirt, "KVM paravirt interface"),
];

/// The `explain` table: flags, blockers, warnings, CPUID, the equivalent explicit list.
pub(crate) fn explain(
    title: &str,
    r: &Resolution,
    leaves: &[CpuidLeaf],
    qemu: &QemuEquivalent,
    backend: Backend,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{title}");
    for (kind, heading) in SECTIONS {
        let _ = writeln!(s, "\n{heading}:");
        let _ = writeln!(s, "  {:<26} {:<5} {:<14} REASON", "FLAG", "STATE", "VALUE");
        for d in r.decisions.iter().filter(|d| d.flag.kind() == kind) {
            let state = match (kind, d.on) {
                (FlagKind::Identity, true) => "set",
                (FlagKind::Identity, false) => "-",
                (_, true) => "on",
                (_, false) => "off",
            };
            let value = d.value.as_deref().unwrap_or("");
            let _ = writeln!(
                s,
                "  {:<26} {:<5} {:<14} {}",
                d.flag.name(),
                state,
                value,
                d.reason
            );
        }
    }
    if r.migration_blockers.is_empty() {
        let _ = writeln!(s, "\nMigration: nothing blocks live migration.");
    } else {
        let _ = writeln!(s, "\nMigration blockers:");
        for b in &r.migration_blockers {
            let _ = writeln!(s, "  {}: {}", b.flag, b.reason);
        }
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(s, "\nWarnings:");
        for w in &r.warnings {
            let _ = writeln!(s, "  - {w}");
        }
    }
    let caps: Vec<&str> = r.kvm_caps_to_enable().iter().map(|c| c.name).collect();
    if !caps.is_empty() {
        let _ = writeln!(
            s,
            "\nPer-vCPU KVM capabilities to enable: {}",
            caps.join(", ")
        );
    }
    let _ = writeln!(s, "\nCPUID leaves:");
    s.push_str(&cpuid_table(leaves));
    let _ = writeln!(
        s,
        "\nEquivalent explicit list (no profile needed):\n  --hv {}",
        r.config
    );
    let _ = writeln!(
        s,
        "\nQEMU {} command line for this set:\n  -cpu {}",
        qemu.version, qemu.cpu
    );
    for d in &qemu.dropped {
        let effect = if d.lost { "" } else { " (no effect)" };
        let _ = writeln!(
            s,
            "  left out{effect}: {}: {}",
            d.names().join(","),
            d.reason
        );
    }
    if backend == Backend::Kernel {
        s.push_str(&qemu_cpuid_claim(qemu));
    } else {
        // Both run on KVM's in-kernel Hyper-V; the user backend's leaves are not compared.
        let _ = writeln!(
            s,
            "\nCPUID is compared with QEMU's for the kernel backend only (--backend kernel)."
        );
    }
    s
}

/// "Same CPUID as QEMU X.Y with ...", and where it is not: the claim the `qemu` suite checks
/// with real dumps of both inside the emulated Intel host (for QEMU 7.2; for other releases it
/// is the version table's prediction, and says so).
fn qemu_cpuid_claim(qemu: &QemuEquivalent) -> String {
    let mut s = String::new();
    // The VMX bit is part of the comparison: QEMU needs vmx=on to show it, as hvkvm --cpu host.
    let cpu = qemu.cpu.replacen("host", "host,vmx=on", 1);
    let measured = qemu.version == CPUID_COMPARED_WITH;
    let same = if measured {
        "Same CPUID as"
    } else {
        "Expected: same CPUID as"
    };
    let except = if qemu.cpuid_differences.is_empty() {
        "."
    } else {
        ", except:"
    };
    let _ = writeln!(
        s,
        "\n{same} QEMU {} with -cpu {cpu} (hypervisor leaves and CPUID.1:ECX.VMX; hvkvm with \
         --cpu host on the kernel backend, both on the same host){except}",
        qemu.version
    );
    for d in &qemu.cpuid_differences {
        let _ = writeln!(
            s,
            "  {:#010x} {} bits {:#010x}: {}",
            d.leaf,
            d.register.name(),
            d.mask,
            d.reason
        );
    }
    if !measured {
        let _ = writeln!(
            s,
            "  (compared with real dumps for QEMU {CPUID_COMPARED_WITH} only; for QEMU {} this \
             follows from the property versions)",
            qemu.version
        );
    }
    s
}

/// CPUID leaves in hex, or why there are none.
pub(crate) fn cpuid_table(leaves: &[CpuidLeaf]) -> String {
    if leaves.is_empty() {
        return "  (none: no Hyper-V enlightenment is on; KVM's own leaves stay at 0x40000000)\n"
            .into();
    }
    let mut s = format!(
        "  {:<10} {:<5} {:<10} {:<10} {:<10} {:<10}\n",
        "FUNCTION", "INDEX", "EAX", "EBX", "ECX", "EDX"
    );
    for l in leaves {
        let _ = writeln!(
            s,
            "  {:#010x} {:<5} {:#010x} {:#010x} {:#010x} {:#010x}",
            l.function, l.index, l.eax, l.ebx, l.ecx, l.edx
        );
    }
    s
}

/// The `baseline` report.
pub(crate) fn baseline(b: &Baseline) -> String {
    let mut s = format!(
        "Fleet baseline over {} host(s): {}\n",
        b.hosts.len(),
        b.hosts.join(", ")
    );
    let _ = writeln!(
        s,
        "\nSafe on every host and across migration:\n  --hv {}",
        b.config
    );
    if !b.notes.is_empty() {
        let _ = writeln!(s, "\nNotes:");
        for n in &b.notes {
            let _ = writeln!(s, "  - {n}");
        }
    }
    if b.excluded.is_empty() {
        let _ = writeln!(s, "\nExcluded: nothing.");
    } else {
        let _ = writeln!(s, "\nExcluded:");
        for e in &b.excluded {
            let _ = writeln!(s, "  {}:", e.flag);
            for (host, reason) in &e.hosts {
                let _ = writeln!(s, "    {host}: {reason}");
            }
        }
    }
    s
}

/// The `flags` table, from the definition table.
pub(crate) fn flags() -> String {
    let mut s = format!(
        "{:<26} {:<30} {:<22} {:<22} {:<32} {:<12} {}\n",
        "FLAG", "ALIASES", "CPUID", "REQUIRES", "KVM CAP (legacy check)", "USER BACKEND", "QEMU"
    );
    for d in FLAGS {
        let aliases: Vec<String> = d.aliases.iter().map(|a| a.to_string()).collect();
        let mut bits: Vec<String> = d
            .cpuid
            .iter()
            .chain(d.extra_guest_bits)
            .map(|b| b.describe())
            .collect();
        if d.cpuid.is_empty() && d.extra_guest_bits.is_empty() {
            bits.push("-".into());
        }
        let requires: Vec<&str> = d.requires.iter().map(|f| f.name()).collect();
        let user = match d.kind {
            FlagKind::KvmParavirt => "n/a (KVM)",
            _ if USER_BACKEND_IMPLEMENTS.contains(&d.flag) => "yes",
            _ => "not yet",
        };
        let qemu = if d.qemu_since <= crate::flags::QEMU_BASELINE {
            format!("<={}", d.qemu_since)
        } else {
            format!("{}+", d.qemu_since)
        };
        let _ = writeln!(
            s,
            "{:<26} {:<30} {:<22} {:<22} {:<32} {:<12} {}",
            d.name,
            or_dash(&aliases.join(",")),
            bits.join(" "),
            or_dash(&requires.join(",")),
            d.kvm_cap.map_or("-", |c| c.name),
            user,
            qemu
        );
    }
    s
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}
