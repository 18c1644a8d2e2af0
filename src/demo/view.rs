//! What the demo guest saw, decoded from its ucall SYNCs (the protocol is documented at the top
//! of guest-tests/guest/src/bin/demo.rs). The guest is treated as hostile: missing, repeated
//! or out-of-range reports become errors or "not seen", never a panic.

use serde::Serialize;

use crate::vm::SyncEvent;
use hyperv_tlfs::cpuid::{privilege, INTERFACE_SIGNATURE};

/// "Not granted / not valid" in the guest's values.
const NONE: u64 = u64::MAX;

/// The privileges of CPUID 0x4000_0003 EAX the demo shows, with their TLFS names. (raw-cpuid
/// decodes no Hyper-V leaf beyond the vendor; the bits come from hyperv-tlfs.)
const PRIVILEGES: &[(u32, &str)] = &[
    (privilege::VP_RUNTIME, "AccessVpRunTimeReg"),
    (privilege::TIME_REF_COUNT, "AccessPartitionReferenceCounter"),
    (privilege::SYNIC, "AccessSynicRegs"),
    (privilege::SYNTIMERS, "AccessSyntheticTimerRegs"),
    (privilege::APIC_MSRS, "AccessIntrCtrlRegs"),
    (privilege::HYPERCALL_MSRS, "AccessHypercallMsrs"),
    (privilege::VP_INDEX, "AccessVpIndex"),
    (privilege::RESET, "AccessResetReg"),
    (privilege::REFERENCE_TSC, "AccessPartitionReferenceTsc"),
    (privilege::GUEST_IDLE, "AccessGuestIdleReg"),
    (privilege::FREQUENCY_MSRS, "AccessFrequencyRegs"),
    (privilege::REENLIGHTENMENT, "AccessReenlightenmentControls"),
    (privilege::TSC_INVARIANT, "AccessTscInvariantControls"),
];

/// The reference TSC page as one vCPU read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TscPageView {
    /// TscSequence (0: invalid).
    pub sequence: u32,
    /// TscScale (64.64 fixed point).
    pub scale: u64,
    /// TscOffset (100 ns units).
    pub offset: i64,
    /// The time the guest computed from it, in 100 ns units (None: the page was invalid).
    pub time_100ns: Option<u64>,
}

/// One vCPU's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VcpuView {
    /// vCPU index (as hvkvm started it).
    pub vcpu: u32,
    /// Initial APIC id (CPUID.1 EBX[31:24]).
    pub apic_id: u64,
    /// The hypervisor as raw-cpuid identified it in the guest.
    pub hypervisor: &'static str,
    /// The vendor signature of leaf 0x4000_0000 ("Microsoft Hv").
    pub vendor: String,
    /// 0x4000_0000 EAX: the highest hypervisor leaf.
    pub max_leaf: u32,
    /// 0x4000_0001 EAX as text ("Hv#1" for the Hyper-V interface).
    pub interface: String,
    /// HV_X64_MSR_VP_INDEX (None: not granted).
    pub vp_index: Option<u64>,
    /// Privileges granted in 0x4000_0003 EAX, by TLFS name.
    pub privileges: Vec<&'static str>,
    /// The reference TSC page (None: not granted).
    pub tsc_page: Option<TscPageView>,
    /// TIME_REF_COUNT (None: not granted).
    pub time_ref_count: Option<u64>,
}

/// vCPU 0's second look at reference time, after the others reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimeAdvance {
    /// Page time, first and last read (100 ns units).
    pub tsc_page: Option<[u64; 2]>,
    /// TIME_REF_COUNT, first and last read.
    pub time_ref_count: Option<[u64; 2]>,
    /// TSC ticks between the two page reads.
    pub tsc_ticks: u64,
    /// HV_X64_MSR_TSC_FREQUENCY (None: not offered).
    pub tsc_hz: Option<u64>,
}

impl TimeAdvance {
    /// How far the page's time advanced, in 100 ns units.
    pub fn page_advance(&self) -> Option<u64> {
        self.tsc_page.map(|[a, b]| b.wrapping_sub(a))
    }
}

/// vCPU 0's synthetic timer: timer 0, direct mode, one-shot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimerView {
    /// The interrupt vector it was armed with.
    pub vector: u8,
    /// The expiration time it was armed for (reference time, 100 ns units).
    pub due_100ns: u64,
    /// TIME_REF_COUNT in the guest's interrupt handler (None: no interrupt came).
    pub fired_at_100ns: Option<u64>,
    /// Interrupts the guest took on the vector.
    pub interrupts: u64,
    /// Timer 0's CONFIG afterwards (a one-shot timer clears its enable bit when it expires).
    pub config_after: u64,
}

impl TimerView {
    /// How long after its expiration time the interrupt reached the guest, in 100 ns units
    /// (0 if it came early, which the guest would have to treat as a VMM bug).
    pub fn late_100ns(&self) -> Option<u64> {
        self.fired_at_100ns
            .map(|t| t.saturating_sub(self.due_100ns))
    }
}

/// What the demo guest reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestView {
    /// One entry per vCPU that reported, by vCPU index.
    pub vcpus: Vec<VcpuView>,
    /// vCPU 0's final reading (None: it never got there).
    pub time: Option<TimeAdvance>,
    /// vCPU 0's synthetic timer (None: not offered, or it never got there); the report shows
    /// it as its own part.
    #[serde(skip)]
    pub timer: Option<TimerView>,
}

/// The guest's reports do not add up.
#[derive(Debug, thiserror::Error)]
#[error("the demo guest's vCPU {vcpu} reported {detail}")]
pub struct ViewError {
    /// The vCPU.
    pub vcpu: u32,
    /// What is wrong.
    pub detail: String,
}

fn opt(v: u64) -> Option<u64> {
    (v != NONE).then_some(v)
}

/// The printable text of little-endian register bytes: trailing NULs dropped, anything else
/// outside printable ASCII shown as '.'.
fn text(regs: &[u32]) -> String {
    let bytes: Vec<u8> = regs.iter().flat_map(|r| r.to_le_bytes()).collect();
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    bytes[..end]
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect()
}

fn hypervisor_name(code: u64) -> &'static str {
    match code {
        0 => "none",
        1 => "Hyper-V",
        2 => "KVM",
        _ => "another hypervisor",
    }
}

/// Decodes the SYNCs of a demo run with `cpus` vCPUs.
pub fn decode(syncs: &[SyncEvent], cpus: u32) -> Result<GuestView, ViewError> {
    let mut vcpus = Vec::new();
    for vcpu in 0..cpus {
        let stage = |n: u64| -> Result<Option<[u64; 6]>, ViewError> {
            let mut found = syncs.iter().filter(|s| s.vcpu == vcpu && s.stage == n);
            match (found.next(), found.next()) {
                (None, _) => Ok(None),
                (Some(s), None) => Ok(Some(s.values)),
                (Some(_), Some(_)) => Err(ViewError {
                    vcpu,
                    detail: format!("SYNC {n} more than once"),
                }),
            }
        };
        let (Some(id), Some(hv), Some(time)) = (stage(1)?, stage(2)?, stage(3)?) else {
            continue;
        };
        if id[0] != u64::from(vcpu) {
            return Err(ViewError {
                vcpu,
                detail: format!("index {} in SYNC 1", id[0]),
            });
        }
        let [ebx, ecx, edx, max_leaf] = [
            id[3] as u32,
            (id[3] >> 32) as u32,
            id[4] as u32,
            (id[4] >> 32) as u32,
        ];
        let interface = id[5] as u32;
        let privileges = PRIVILEGES
            .iter()
            .filter(|(bit, _)| hv[1] as u32 & bit != 0)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>();
        let page_granted = hv[1] as u32 & privilege::REFERENCE_TSC != 0;
        vcpus.push(VcpuView {
            vcpu,
            apic_id: id[1],
            hypervisor: hypervisor_name(id[2]),
            vendor: text(&[ebx, ecx, edx]),
            max_leaf,
            interface: if interface == INTERFACE_SIGNATURE {
                "Hv#1".to_string()
            } else {
                format!("{interface:#x} ({})", text(&[interface]))
            },
            vp_index: opt(hv[0]),
            privileges,
            tsc_page: page_granted.then(|| TscPageView {
                sequence: time[0] as u32,
                scale: time[1],
                offset: time[2] as i64,
                time_100ns: opt(time[3]),
            }),
            time_ref_count: opt(time[4]),
        });
    }
    let time = syncs.iter().find(|s| s.vcpu == 0 && s.stage == 4).map(|s| {
        let v = s.values;
        TimeAdvance {
            tsc_page: opt(v[0]).zip(opt(v[1])).map(|(a, b)| [a, b]),
            time_ref_count: opt(v[2]).zip(opt(v[3])).map(|(a, b)| [a, b]),
            tsc_ticks: v[4],
            tsc_hz: (v[5] != 0).then_some(v[5]),
        }
    });
    let timer = syncs.iter().find(|s| s.vcpu == 0 && s.stage == 5).map(|s| {
        let [fired, due, at, interrupts, vector, config] = s.values;
        TimerView {
            vector: vector as u8,
            due_100ns: due,
            fired_at_100ns: (fired == 1 && at != 0).then_some(at),
            interrupts,
            config_after: config,
        }
    });
    Ok(GuestView { vcpus, time, timer })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(vcpu: u32, stage: u64, values: [u64; 6]) -> SyncEvent {
        SyncEvent {
            vcpu,
            stage,
            values,
        }
    }

    /// "Microsoft Hv" as CPUID returns it, max leaf 0x4000000a.
    fn id(vcpu: u64) -> [u64; 6] {
        let (ebx, ecx, edx) = (0x7263_694d_u64, 0x666f_736f_u64, 0x7648_2074_u64);
        [
            vcpu,
            vcpu,
            1,
            ebx | ecx << 32,
            edx | 0x4000_000a << 32,
            u64::from(INTERFACE_SIGNATURE),
        ]
    }

    #[test]
    fn decodes_two_vcpus_and_the_final_time() {
        let eax = u64::from(privilege::VP_INDEX | privilege::REFERENCE_TSC);
        let mut syncs = Vec::new();
        for v in 0..2u32 {
            syncs.push(sync(v, 1, id(v.into())));
            syncs.push(sync(v, 2, [v.into(), eax, 0, 0, 0, 0]));
            syncs.push(sync(v, 3, [1, 0x10, -5i64 as u64, 1000, NONE, 7]));
        }
        syncs.push(sync(0, 4, [1000, 1500, NONE, NONE, 99, 0]));
        syncs.push(sync(0, 5, [1, 2000, 2150, 1, 0xe0, 0x5e0]));
        let view = decode(&syncs, 2).unwrap();
        let timer = view.timer.clone().unwrap();
        assert_eq!((timer.vector, timer.late_100ns()), (0xe0, Some(150)));
        assert_eq!(view.vcpus.len(), 2);
        let v1 = &view.vcpus[1];
        assert_eq!(v1.vendor, "Microsoft Hv");
        assert_eq!(v1.hypervisor, "Hyper-V");
        assert_eq!(v1.interface, "Hv#1");
        assert_eq!(v1.max_leaf, 0x4000_000a);
        assert_eq!(v1.vp_index, Some(1));
        assert_eq!(
            v1.privileges,
            ["AccessVpIndex", "AccessPartitionReferenceTsc"]
        );
        assert_eq!(v1.tsc_page.as_ref().unwrap().offset, -5);
        assert_eq!(v1.time_ref_count, None);
        let time = view.time.unwrap();
        assert_eq!(time.page_advance(), Some(500));
        assert_eq!(time.time_ref_count, None);
        assert_eq!(time.tsc_hz, None);
    }

    #[test]
    fn hostile_reports_are_errors_or_ignored() {
        // A vCPU claiming another index.
        let syncs = [sync(0, 1, id(5)), sync(0, 2, [0; 6]), sync(0, 3, [0; 6])];
        assert!(decode(&syncs, 1).is_err());
        // A repeated stage.
        let syncs = [sync(0, 1, id(0)), sync(0, 1, id(0))];
        assert!(decode(&syncs, 1).is_err());
        // An incomplete vCPU is left out; a KVM vendor is shown as such.
        let mut kvm = id(0);
        kvm[2] = 2;
        kvm[3] = 0x4b4d_564b | 0x564b_4d56 << 32;
        kvm[4] = 0x4d;
        let syncs = [
            sync(0, 1, kvm),
            sync(0, 2, [NONE, 0, 0, 0, 0, 0]),
            sync(0, 3, [0; 6]),
            sync(1, 1, id(1)),
        ];
        let view = decode(&syncs, 2).unwrap();
        assert_eq!(view.vcpus.len(), 1);
        assert_eq!(view.vcpus[0].vendor, "KVMKVMKVM");
        assert_eq!(view.vcpus[0].hypervisor, "KVM");
        assert_eq!(view.vcpus[0].tsc_page, None);
        assert!(view.time.is_none());
        assert!(view.timer.is_none());
    }
}
