//! What a guest actually used of the Hyper-V interface: the answer users otherwise get only by
//! counting MSR exits with kernel tracepoints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::user::usage::MsrUse;

/// The `events` entry that holds the time dilation factor (a setting, not a count).
pub const TIME_DILATION_FACTOR: &str = "time dilation factor";
/// Most refused accesses kept verbatim in a report (the rest are only counted).
const MAX_REFUSALS: usize = 64;

/// The usage report of one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Which backend served the guest: "user" (hvkvm) or "kernel" (KVM).
    pub backend: String,
    /// Enlightenments offered to the guest (QEMU names).
    pub offered: Vec<String>,
    /// The last GUEST_OS_ID value, raw and decoded.
    pub guest_os_id: Option<GuestOsId>,
    /// Hypercall page GPA, if the guest enabled it.
    pub hypercall_page: Option<u64>,
    /// Reference TSC page GPA, if enabled.
    pub tsc_page: Option<u64>,
    /// VP assist pages enabled, by VP.
    pub vp_assist_pages: BTreeMap<u32, u64>,
    /// Those pages decoded at the end of the run, with the eVMCS each announces.
    pub vp_assist: Vec<super::inspect::AssistPageView>,
    /// MSR use by name (user backend: hvkvm sees every access).
    pub msrs: BTreeMap<String, MsrUse>,
    /// Final values of the synthetic MSRs by name and VP, read back with KVM_GET_MSRS when
    /// each vCPU stopped (kernel backend: KVM handles the accesses, so only values are known).
    pub msr_values: BTreeMap<String, BTreeMap<u32, u64>>,
    /// `KVM_EXIT_HYPERV` SynIC exits (kernel backend).
    pub synic_exits: u64,
    /// `KVM_EXIT_HYPERV` SynDbg exits (kernel backend).
    pub syndbg_exits: u64,
    /// Hypercalls by name, then by result status.
    pub hypercalls: BTreeMap<String, BTreeMap<String, u64>>,
    /// Hypercalls that raised #UD.
    pub hypercall_ud: u64,
    /// What the backend did for the guest, by name (user backend: SynIC and timer
    /// deliveries, IPIs, TLB flushes).
    pub events: BTreeMap<String, u64>,
    /// Crash reports the guest made.
    pub crashes: Vec<[u64; 5]>,
    /// Things the guest tried that were refused (first few).
    pub refused: Vec<String>,
    /// How many refusals were not kept.
    pub refused_dropped: u64,
}

/// GUEST_OS_ID, decoded (TLFS "Reporting the Guest OS Identity").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuestOsId {
    /// The raw value.
    pub raw: u64,
    /// Readable form.
    pub decoded: String,
}

impl GuestOsId {
    /// Decodes the open-source (bit 63) and Microsoft encodings.
    pub fn decode(raw: u64) -> Self {
        let decoded = if raw == 0 {
            "none (0: hypercalls disabled)".to_string()
        } else if raw >> 63 == 1 {
            let os_type = (raw >> 56) & 0x7f;
            let os = match os_type {
                1 => "Linux",
                2 => "FreeBSD",
                3 => "Xen",
                4 => "Illumos",
                _ => "open-source OS",
            };
            // Bits 47:16 carry LINUX_VERSION_CODE (major << 16 | minor << 8 | sublevel).
            let version = (raw >> 16) & 0xffff_ffff;
            format!(
                "{os} (open source, type {os_type}), kernel version {}.{}.{}, build {}",
                (version >> 16) & 0xff,
                (version >> 8) & 0xff,
                version & 0xff,
                raw & 0xffff
            )
        } else {
            let vendor = (raw >> 48) & 0x7fff;
            let os = (raw >> 40) & 0xff;
            let major = (raw >> 32) & 0xff;
            let minor = (raw >> 24) & 0xff;
            let service = (raw >> 16) & 0xff;
            let build = raw & 0xffff;
            let vendor = if vendor == 1 {
                "Microsoft".to_string()
            } else {
                format!("vendor {vendor}")
            };
            let os = match os {
                1 => "MS-DOS".to_string(),
                2 => "Windows 3.x".to_string(),
                3 => "Windows 9x".to_string(),
                4 => "Windows NT".to_string(),
                5 => "Windows CE".to_string(),
                n => format!("OS {n}"),
            };
            format!("{vendor} {os} {major}.{minor}, service pack {service}, build {build}")
        };
        GuestOsId { raw, decoded }
    }
}

impl UsageReport {
    /// Adds the counts of `earlier`, the report of the same guest before a snapshot it was
    /// restored from, so a restored guest's report covers its whole life. State (pages, OS
    /// id, crash reports, which the snapshot restores) stays this report's.
    pub fn add_earlier(&mut self, earlier: &UsageReport) {
        for (name, n) in &earlier.events {
            // A setting, not a count: the current backend reports its own.
            if name != TIME_DILATION_FACTOR {
                *self.events.entry(name.clone()).or_default() += n;
            }
        }
        for (name, u) in &earlier.msrs {
            let e = self.msrs.entry(name.clone()).or_default();
            e.reads += u.reads;
            e.writes += u.writes;
            e.faults += u.faults;
        }
        for (call, statuses) in &earlier.hypercalls {
            let e = self.hypercalls.entry(call.clone()).or_default();
            for (status, n) in statuses {
                *e.entry(status.clone()).or_default() += n;
            }
        }
        self.hypercall_ud += earlier.hypercall_ud;
        self.synic_exits += earlier.synic_exits;
        self.syndbg_exits += earlier.syndbg_exits;
        self.add_refusals(earlier.refused.iter(), earlier.refused_dropped);
    }

    /// Adds refusals (kept verbatim up to a bound, the rest counted), each once.
    pub fn add_refusals<T: std::fmt::Display>(
        &mut self,
        refusals: impl Iterator<Item = T>,
        dropped: u64,
    ) {
        for r in refusals {
            let text = r.to_string();
            if self.refused.contains(&text) {
                continue;
            }
            if self.refused.len() < MAX_REFUSALS {
                self.refused.push(text);
            } else {
                self.refused_dropped += 1;
            }
        }
        self.refused_dropped += dropped;
    }

    /// A readable multi-line summary.
    pub fn render(&self) -> String {
        let mut out = format!("Hyper-V usage report ({} backend)\n", self.backend);
        out.push_str(&format!("  offered:        {}\n", self.offered.join(", ")));
        let os = self
            .guest_os_id
            .as_ref()
            .map_or("never written".to_string(), |g| {
                format!("{:#018x}: {}", g.raw, g.decoded)
            });
        out.push_str(&format!("  guest OS ID:    {os}\n"));
        let page =
            |p: Option<u64>| p.map_or("not enabled".to_string(), |g| format!("enabled at {g:#x}"));
        out.push_str(&format!(
            "  hypercall page: {}\n",
            page(self.hypercall_page)
        ));
        out.push_str(&format!("  TSC page:       {}\n", page(self.tsc_page)));
        if self.vp_assist_pages.is_empty() {
            out.push_str("  VP assist page: not enabled\n");
        }
        for (vp, gpa) in &self.vp_assist_pages {
            out.push_str(&format!("  VP assist page: VP {vp} at {gpa:#x}\n"));
        }
        for view in &self.vp_assist {
            render_assist_page(&mut out, view);
        }
        if !self.msrs.is_empty() {
            out.push_str("  MSRs used (reads / writes / #GP):\n");
        }
        for (name, u) in &self.msrs {
            out.push_str(&format!(
                "    {name:<24} {:>8} {:>8} {:>6}\n",
                u.reads, u.writes, u.faults
            ));
        }
        if !self.msr_values.is_empty() {
            out.push_str("  synthetic MSRs when the vCPUs stopped (VP: value):\n");
        }
        for (name, by_vp) in &self.msr_values {
            let values: Vec<String> = by_vp
                .iter()
                .map(|(vp, v)| format!("{vp}: {v:#x}"))
                .collect();
            out.push_str(&format!("    {name:<24} {}\n", values.join(", ")));
        }
        if self.synic_exits + self.syndbg_exits > 0 {
            out.push_str(&format!(
                "  SynIC exits: {}, SynDbg exits: {}\n",
                self.synic_exits, self.syndbg_exits
            ));
        }
        if self.hypercalls.is_empty() && self.hypercall_ud == 0 {
            out.push_str("  hypercalls:     none\n");
        }
        for (name, by_status) in &self.hypercalls {
            let statuses: Vec<String> =
                by_status.iter().map(|(s, n)| format!("{s} x{n}")).collect();
            out.push_str(&format!("  hypercall {name}: {}\n", statuses.join(", ")));
        }
        if self.hypercall_ud > 0 {
            out.push_str(&format!(
                "  hypercalls refused with #UD: {}\n",
                self.hypercall_ud
            ));
        }
        if !self.events.is_empty() {
            out.push_str("  backend events:\n");
        }
        for (name, n) in &self.events {
            out.push_str(&format!("    {name:<52} {n:>8}\n"));
        }
        for c in &self.crashes {
            out.push_str(&format!("  crash reported: P0..P4 = {c:#x?}\n"));
        }
        for r in &self.refused {
            out.push_str(&format!("  refused: {r}\n"));
        }
        if self.refused_dropped > 0 {
            out.push_str(&format!(
                "  ({} more refusals not listed)\n",
                self.refused_dropped
            ));
        }
        out
    }
}

/// The nested part of the report for one VP: its assist page, whether it enters L2 through an
/// eVMCS, and that eVMCS's key fields, or why any of it is invalid.
fn render_assist_page(out: &mut String, view: &super::inspect::AssistPageView) {
    let vp = view.vp;
    if let Some(reason) = &view.invalid {
        out.push_str(&format!(
            "    VP {vp} assist page invalid: {reason}
"
        ));
        return;
    }
    let versions = view
        .evmcs_versions
        .as_deref()
        .map_or(String::new(), |v| format!(", eVMCS versions {v}"));
    out.push_str(&format!(
        "    VP {vp}: enlighten_vmentry {}, current_nested_vmcs {:#x}{versions}\n",
        u8::from(view.enlighten_vmentry),
        view.current_nested_vmcs
    ));
    let Some(e) = &view.evmcs else {
        return;
    };
    if let Some(reason) = &e.invalid {
        out.push_str(&format!("      eVMCS invalid: {reason}\n"));
        return;
    }
    let revision = if e.revision_ok {
        String::new()
    } else {
        " (not eVMCS v1: KVM fails the entry)".to_string()
    };
    let dirty = if e.dirty_groups.is_empty() {
        "none".to_string()
    } else {
        e.dirty_groups.join(" ")
    };
    out.push_str(&format!(
        "      eVMCS at {:#x}: revision {}{revision}, clean fields {:#06x} (changed: {dirty})\n",
        e.gpa, e.revision_id, e.clean_fields
    ));
    out.push_str(&format!(
        "      L2 RIP {:#x}, last exit {:#x} ({}), qualification {:#x}, VM-instruction error {}\n",
        e.guest_rip,
        e.exit_reason,
        e.exit_reason_name,
        e.exit_qualification,
        e.vm_instruction_error
    ));
    for (name, value) in &e.fields {
        out.push_str(&format!("      {name:<36} {value:#x}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_windows_and_linux_guest_os_ids() {
        // Windows Server 2016 build 14393 (Microsoft, NT, 10.0).
        let ws = GuestOsId::decode(0x0001_040A_0000_3839);
        assert_eq!(
            ws.decoded,
            "Microsoft Windows NT 10.0, service pack 0, build 14393"
        );
        // Linux 6.1.0 as Linux reports itself (open source, type 1).
        // Linux 6.1.192: open source, type 1, version code 0x0601C0 in bits 47:16.
        let linux = GuestOsId::decode(0x8100_0006_01C0_0000);
        assert_eq!(
            linux.decoded,
            "Linux (open source, type 1), kernel version 6.1.192, build 0"
        );
    }

    #[test]
    fn refusals_are_bounded_and_deduplicated() {
        let mut r = UsageReport::default();
        r.add_refusals((0..200).map(|i| format!("thing {i}")), 5);
        r.add_refusals(std::iter::once("thing 0"), 0);
        assert_eq!(r.refused.len(), MAX_REFUSALS);
        assert_eq!(r.refused_dropped, 200 - MAX_REFUSALS as u64 + 5);
    }
}
