//! Comparing the CPUID two VMMs show the same guest: the dumps of the `cpuid_dump` payload
//! (guest/src/bin/cpuid_dump.rs), what of them is comparable, and the differing bits.
//!
//! Only what a Hyper-V guest reads is compared: CPUID.1:ECX.VMX and the hypervisor leaves
//! 0x40000000–0x4000000A and 0x40000100–0x40000101. A leaf a VMM does not define reads as
//! zero here, whatever KVM returns for it (KVM answers an undefined leaf with the highest basic
//! leaf, which depends on the CPU model and says nothing about the hypervisor interface).

use std::collections::BTreeMap;
use std::fmt;

/// CPUID.1:ECX bit 5: VMX.
pub const VMX_BIT: u32 = 1 << 5;
/// The hypervisor leaves the dump covers, in order.
pub const HV_LEAVES: [u32; 13] = [
    0x4000_0000,
    0x4000_0001,
    0x4000_0002,
    0x4000_0003,
    0x4000_0004,
    0x4000_0005,
    0x4000_0006,
    0x4000_0007,
    0x4000_0008,
    0x4000_0009,
    0x4000_000A,
    0x4000_0100,
    0x4000_0101,
];
/// KVM's signature "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// One register of a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reg {
    /// EAX
    Eax,
    /// EBX
    Ebx,
    /// ECX
    Ecx,
    /// EDX
    Edx,
}

impl Reg {
    /// All four, in output order.
    pub const ALL: [Reg; 4] = [Reg::Eax, Reg::Ebx, Reg::Ecx, Reg::Edx];

    /// Parses "eax".."edx" (any case).
    pub fn from_name(name: &str) -> Option<Reg> {
        match name.to_ascii_lowercase().as_str() {
            "eax" => Some(Reg::Eax),
            "ebx" => Some(Reg::Ebx),
            "ecx" => Some(Reg::Ecx),
            "edx" => Some(Reg::Edx),
            _ => None,
        }
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reg::Eax => "EAX",
            Reg::Ebx => "EBX",
            Reg::Ecx => "ECX",
            Reg::Edx => "EDX",
        })
    }
}

/// The leaves of one dump, by leaf number (subleaf 0), as [EAX, EBX, ECX, EDX].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump(pub BTreeMap<u32, [u32; 4]>);

/// Why a console text is not a complete dump.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DumpError {
    /// No `HVKVM-CPUID-BEGIN` … `HVKVM-CPUID-END` block.
    #[error("no complete HVKVM-CPUID-BEGIN..END block in the guest's output")]
    Incomplete,
    /// A line inside the block is malformed.
    #[error("malformed dump line {0:?}")]
    BadLine(String),
    /// A leaf the comparison needs is missing.
    #[error("the dump has no leaf {0:#x}")]
    MissingLeaf(u32),
}

impl Dump {
    /// Parses the payload's output (other console lines around the block are ignored).
    pub fn parse(text: &str) -> Result<Dump, DumpError> {
        let mut leaves = BTreeMap::new();
        let mut inside = false;
        for line in text.lines().map(|l| l.trim_end_matches('\r')) {
            match line.trim() {
                "HVKVM-CPUID-BEGIN" => inside = true,
                "HVKVM-CPUID-END" if inside => {
                    let dump = Dump(leaves);
                    for leaf in std::iter::once(1).chain(HV_LEAVES) {
                        if !dump.0.contains_key(&leaf) {
                            return Err(DumpError::MissingLeaf(leaf));
                        }
                    }
                    return Ok(dump);
                }
                l if inside => {
                    let fields: Vec<u32> = l
                        .strip_prefix("HVKVM-CPUID ")
                        .map(|rest| {
                            rest.split_whitespace()
                                .filter_map(|f| u32::from_str_radix(f, 16).ok())
                                .collect()
                        })
                        .unwrap_or_default();
                    let [leaf, _subleaf, eax, ebx, ecx, edx] = fields[..] else {
                        return Err(DumpError::BadLine(l.to_string()));
                    };
                    leaves.insert(leaf, [eax, ebx, ecx, edx]);
                }
                _ => {}
            }
        }
        Err(DumpError::Incomplete)
    }

    fn leaf(&self, leaf: u32) -> [u32; 4] {
        self.0.get(&leaf).copied().unwrap_or_default()
    }

    /// What is compared: CPUID.1 reduced to ECX.VMX, the Hyper-V leaves up to the highest one
    /// 0x40000000.EAX names, KVM's leaves at 0x40000100 where their signature is there; every
    /// other leaf of [`HV_LEAVES`] as zero.
    pub fn comparable(&self) -> BTreeMap<u32, [u32; 4]> {
        let mut out = BTreeMap::new();
        out.insert(1, [0, 0, self.leaf(1)[2] & VMX_BIT, 0]);
        let max = self.leaf(0x4000_0000)[0];
        let kvm = self.leaf(0x4000_0100);
        let kvm_present = kvm[1..] == KVM_SIGNATURE;
        for leaf in HV_LEAVES {
            let defined = if leaf >= 0x4000_0100 {
                kvm_present
            } else {
                leaf <= max && max < 0x4000_0100
            };
            out.insert(leaf, if defined { self.leaf(leaf) } else { [0; 4] });
        }
        out
    }
}

/// One register whose comparable values differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegDiff {
    /// The leaf (1 or a hypervisor leaf).
    pub leaf: u32,
    /// The register.
    pub reg: Reg,
    /// What hvkvm's guest saw.
    pub hvkvm: u32,
    /// What QEMU's guest saw.
    pub qemu: u32,
}

impl RegDiff {
    /// The differing bits.
    pub fn bits(&self) -> u32 {
        self.hvkvm ^ self.qemu
    }
}

impl fmt::Display for RegDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#010x} {}: hvkvm {:#010x}, QEMU {:#010x} (bits {:#010x})",
            self.leaf,
            self.reg,
            self.hvkvm,
            self.qemu,
            self.bits()
        )
    }
}

/// Every register whose comparable values differ between the two dumps.
pub fn diff(hvkvm: &Dump, qemu: &Dump) -> Vec<RegDiff> {
    let (h, q) = (hvkvm.comparable(), qemu.comparable());
    let mut out = Vec::new();
    for (leaf, hv) in &h {
        let qv = q.get(leaf).copied().unwrap_or_default();
        for (i, reg) in Reg::ALL.into_iter().enumerate() {
            if hv[i] != qv[i] {
                out.push(RegDiff {
                    leaf: *leaf,
                    reg,
                    hvkvm: hv[i],
                    qemu: qv[i],
                });
            }
        }
    }
    out
}

/// A documented difference: these bits of a register may differ, for this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The leaf.
    pub leaf: u32,
    /// The register.
    pub reg: Reg,
    /// The bits that differ.
    pub mask: u32,
    /// Why.
    pub reason: String,
}

/// How real differences and documented ones disagree; empty when they agree.
pub fn check(actual: &[RegDiff], expected: &[Expected]) -> Vec<String> {
    let mut problems = Vec::new();
    for d in actual {
        let explained: u32 = expected
            .iter()
            .filter(|e| e.leaf == d.leaf && e.reg == d.reg)
            .fold(0, |m, e| m | e.mask);
        let unexplained = d.bits() & !explained;
        if unexplained != 0 {
            problems.push(format!(
                "undocumented difference {d}: bits {unexplained:#010x} are not in the list"
            ));
        }
    }
    for e in expected {
        let seen = actual
            .iter()
            .filter(|d| d.leaf == e.leaf && d.reg == e.reg)
            .any(|d| d.bits() & e.mask != 0);
        if !seen {
            problems.push(format!(
                "documented difference {:#010x} {} bits {:#010x} ({}) did not occur",
                e.leaf, e.reg, e.mask, e.reason
            ));
        }
    }
    problems
}

/// The comparison as a table: leaf, register, both values, and the reason where documented.
pub fn table(actual: &[RegDiff], expected: &[Expected]) -> String {
    if actual.is_empty() {
        return "  (no difference)\n".to_string();
    }
    let mut s = String::new();
    for d in actual {
        let reasons: Vec<&str> = expected
            .iter()
            .filter(|e| e.leaf == d.leaf && e.reg == d.reg && e.mask & d.bits() != 0)
            .map(|e| e.reason.as_str())
            .collect();
        let reason = if reasons.is_empty() {
            "UNDOCUMENTED".to_string()
        } else {
            reasons.join("; ")
        };
        s.push_str(&format!("  {d}: {reason}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(lines: &[(u32, [u32; 4])]) -> String {
        let mut leaves: BTreeMap<u32, [u32; 4]> = std::iter::once(1)
            .chain(HV_LEAVES)
            .map(|l| (l, [0; 4]))
            .collect();
        for (l, v) in lines {
            leaves.insert(*l, *v);
        }
        let mut s = String::from("noise\nHVKVM-CPUID-BEGIN\n");
        for (l, v) in leaves {
            s.push_str(&format!(
                "HVKVM-CPUID {l:08x} 00000000 {:08x} {:08x} {:08x} {:08x}\r\n",
                v[0], v[1], v[2], v[3]
            ));
        }
        s + "HVKVM-CPUID-END\nmore noise\n"
    }

    #[test]
    fn parses_and_finds_a_differing_bit() {
        let h = Dump::parse(&dump(&[
            (0x4000_0000, [0x4000_0005, 1, 2, 3]),
            (0x4000_0003, [0x7f, 0, 0, 0]),
        ]))
        .unwrap();
        let q = Dump::parse(&dump(&[
            (0x4000_0000, [0x4000_0005, 1, 2, 3]),
            (0x4000_0003, [0x5f, 0, 0, 0]),
        ]))
        .unwrap();
        let d = diff(&h, &q);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].leaf, d[0].reg, d[0].bits()),
            (0x4000_0003, Reg::Eax, 0x20)
        );
        let why = Expected {
            leaf: 0x4000_0003,
            reg: Reg::Eax,
            mask: 0x20,
            reason: "test".into(),
        };
        assert!(check(&d, std::slice::from_ref(&why)).is_empty());
        assert_eq!(check(&d, &[]).len(), 1, "an undocumented bit is reported");
        assert_eq!(
            check(&[], &[why]).len(),
            1,
            "a documented bit that did not differ is reported"
        );
    }

    #[test]
    fn leaves_beyond_the_maximum_and_absent_kvm_leaves_read_as_zero() {
        // Both VMMs say the highest leaf is 5: KVM's answers for 6..A (basic-leaf data that
        // depends on the CPU model) are not compared. Only one has KVM's signature at 0x100.
        let h = Dump::parse(&dump(&[
            (0x4000_0000, [0x4000_0005, 0, 0, 0]),
            (0x4000_0006, [9, 9, 9, 9]),
            (0x4000_0100, [0x4000_0101, 0x4b4d_564b, 0x564b_4d56, 0x4d]),
        ]))
        .unwrap();
        let q = Dump::parse(&dump(&[
            (0x4000_0000, [0x4000_0005, 0, 0, 0]),
            (0x4000_0006, [7, 7, 7, 7]),
            (0x4000_0100, [5, 5, 5, 5]),
        ]))
        .unwrap();
        let d = diff(&h, &q);
        assert!(d.iter().all(|d| d.leaf == 0x4000_0100), "{d:?}");
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn only_vmx_of_leaf_1_counts() {
        let h = Dump::parse(&dump(&[(1, [1, 2, 0xffff_ffff, 4])])).unwrap();
        let q = Dump::parse(&dump(&[(1, [5, 6, !VMX_BIT, 8])])).unwrap();
        let d = diff(&h, &q);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].leaf, d[0].reg, d[0].bits()), (1, Reg::Ecx, VMX_BIT));
    }

    #[test]
    fn a_cut_off_dump_is_an_error() {
        assert_eq!(
            Dump::parse("HVKVM-CPUID-BEGIN\nHVKVM-CPUID 00000001 00000000 1 2 3 4\n"),
            Err(DumpError::Incomplete)
        );
        assert_eq!(
            Dump::parse("HVKVM-CPUID-BEGIN\nHVKVM-CPUID 1 2\nHVKVM-CPUID-END\n"),
            Err(DumpError::BadLine("HVKVM-CPUID 1 2".into()))
        );
        assert_eq!(
            Dump::parse("HVKVM-CPUID-BEGIN\nHVKVM-CPUID-END\n"),
            Err(DumpError::MissingLeaf(1))
        );
    }
}
