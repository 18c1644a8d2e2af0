//! Per-vCPU exit counters and host time, passed by `Arc` (no globals) and read after the run.
//!
//! Every return from KVM_RUN is counted once, by kind ([`ExitKind`]), with the host time hvkvm
//! spent handling it; port-I/O exits are also counted per device ([`PortGroup`]). The time
//! inside KVM_RUN (the guest, and KVM's own exit handling) is summed separately, so a run
//! splits into guest time, hvkvm time and time the vCPU thread was parked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// What a return from KVM_RUN was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    /// `in` from a port.
    IoIn,
    /// `out` to a port.
    IoOut,
    /// MMIO read of an unassigned address.
    MmioRead,
    /// MMIO write to an unassigned address.
    MmioWrite,
    /// User-space RDMSR.
    MsrRead,
    /// User-space WRMSR.
    MsrWrite,
    /// KVM_EXIT_HYPERV (kernel Hyper-V backend).
    Hyperv,
    /// KVM_EXIT_INTERNAL_ERROR (an emulation failure the host quirks may complete).
    InternalError,
    /// KVM_EXIT_DEBUG (host-quirk breakpoints).
    Debug,
    /// A kick: KVM_RUN returned EINTR/EAGAIN.
    Interrupted,
    /// Anything else (HLT, shutdown, system events, entry failures, ...).
    Other,
}

impl ExitKind {
    /// Every kind, in report order.
    pub const ALL: [ExitKind; 11] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::MsrRead,
        ExitKind::MsrWrite,
        ExitKind::Hyperv,
        ExitKind::InternalError,
        ExitKind::Debug,
        ExitKind::Interrupted,
        ExitKind::Other,
    ];

    /// The name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io_in",
            ExitKind::IoOut => "io_out",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::MsrRead => "msr_read",
            ExitKind::MsrWrite => "msr_write",
            ExitKind::Hyperv => "hyperv",
            ExitKind::InternalError => "internal_error",
            ExitKind::Debug => "debug",
            ExitKind::Interrupted => "interrupted",
            ExitKind::Other => "other",
        }
    }
}

/// The device a port-I/O exit went to (fixed PC port assignments; a port nobody claims still
/// exits, so the PIT and PCI probes of a guest show up here even without those devices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortGroup {
    /// COM1, 0x3f8..0x400.
    Serial,
    /// i8042 keyboard controller, 0x60 and 0x64.
    I8042,
    /// PIT 0x40..0x44 and the speaker/gate port 0x61.
    Pit,
    /// CMOS RTC, 0x70 and 0x71.
    Cmos,
    /// The 8259 PICs, 0x20/0x21, 0xa0/0xa1 and ELCR 0x4d0/0x4d1.
    Pic,
    /// POST/io-delay port 0x80.
    Post,
    /// PCI configuration ports 0xcf8..0xd00.
    Pci,
    /// ACPI PM1a, 0x600..0x608.
    AcpiPm,
    /// Test-exit port 0xf4, ucall port 0x1000 and the Hyper-V hypercall trampoline port 0x99.
    Hvkvm,
    /// Any other port.
    Other,
}

impl PortGroup {
    /// Every group, in report order.
    pub const ALL: [PortGroup; 10] = [
        PortGroup::Serial,
        PortGroup::I8042,
        PortGroup::Pit,
        PortGroup::Cmos,
        PortGroup::Pic,
        PortGroup::Post,
        PortGroup::Pci,
        PortGroup::AcpiPm,
        PortGroup::Hvkvm,
        PortGroup::Other,
    ];

    /// The group of `port`.
    pub fn of(port: u16) -> PortGroup {
        match port {
            0x3f8..=0x3ff => PortGroup::Serial,
            0x60 | 0x64 => PortGroup::I8042,
            0x40..=0x43 | 0x61 => PortGroup::Pit,
            0x70 | 0x71 => PortGroup::Cmos,
            0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1 => PortGroup::Pic,
            0x80 => PortGroup::Post,
            0xcf8..=0xcff => PortGroup::Pci,
            0x600..=0x607 => PortGroup::AcpiPm,
            0xf4 | 0x99 | 0x1000 => PortGroup::Hvkvm,
            _ => PortGroup::Other,
        }
    }

    /// The name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            PortGroup::Serial => "serial",
            PortGroup::I8042 => "i8042",
            PortGroup::Pit => "pit",
            PortGroup::Cmos => "cmos",
            PortGroup::Pic => "pic",
            PortGroup::Post => "post",
            PortGroup::Pci => "pci",
            PortGroup::AcpiPm => "acpi_pm",
            PortGroup::Hvkvm => "hvkvm",
            PortGroup::Other => "other",
        }
    }
}

/// A count and the host time spent on those events.
#[derive(Debug, Default)]
struct Counter {
    count: AtomicU64,
    host_ns: AtomicU64,
}

impl Counter {
    fn snapshot(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.host_ns.load(Ordering::Relaxed),
        )
    }
}

/// Counters one vCPU thread updates.
#[derive(Debug, Default)]
pub struct VcpuStats {
    /// Every return from KVM_RUN, EINTR included.
    pub exits: AtomicU64,
    /// MSR accesses answered with #GP.
    pub msr_gp: AtomicU64,
    /// Instructions completed on the guest's behalf after an emulation failure.
    pub emulation_assists: AtomicU64,
    /// RIP when the vCPU thread left its loop (where a stopped or timed-out guest was).
    pub final_rip: AtomicU64,
    /// Nanoseconds spent inside the KVM_RUN ioctl.
    kvm_run_ns: AtomicU64,
    /// CPU time of the vCPU thread when it left its loop (on hosts that emulate guest code,
    /// the emulation runs in this thread too), in nanoseconds.
    pub cpu_ns: AtomicU64,
    kinds: [Counter; ExitKind::ALL.len()],
    ports: [Counter; PortGroup::ALL.len()],
    /// The exit being handled (set by [`VcpuStats::exit`], timed by [`VcpuStats::handled`]).
    current: Current,
}

/// Which counters the exit in progress is charged to (only its own vCPU thread touches it).
#[derive(Debug, Default)]
struct Current {
    kind: AtomicU64,
    port: AtomicU64,
}

const NO_PORT: u64 = u64::MAX;

impl VcpuStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the time of one KVM_RUN call.
    pub fn ran(&self, in_kvm_run: Duration) {
        self.kvm_run_ns
            .fetch_add(in_kvm_run.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Counts an exit of `kind` (and for port I/O, its port); [`VcpuStats::handled`] later
    /// charges the host time of handling it.
    pub fn exit(&self, kind: ExitKind, port: Option<u16>) {
        Self::bump(&self.exits);
        let k = kind as usize;
        self.kinds[k].count.fetch_add(1, Ordering::Relaxed);
        self.current.kind.store(k as u64, Ordering::Relaxed);
        let p = match port {
            Some(port) => {
                let g = PortGroup::of(port) as usize;
                self.ports[g].count.fetch_add(1, Ordering::Relaxed);
                g as u64
            }
            None => NO_PORT,
        };
        self.current.port.store(p, Ordering::Relaxed);
    }

    /// Charges `host` (the time from KVM_RUN's return until the exit was handled) to the exit
    /// counted last.
    pub fn handled(&self, host: Duration) {
        let ns = host.as_nanos() as u64;
        let k = self.current.kind.load(Ordering::Relaxed) as usize;
        if let Some(c) = self.kinds.get(k) {
            c.host_ns.fetch_add(ns, Ordering::Relaxed);
        }
        let p = self.current.port.load(Ordering::Relaxed);
        if let Some(c) = usize::try_from(p).ok().and_then(|p| self.ports.get(p)) {
            c.host_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// A plain copy for reports.
    pub fn snapshot(&self) -> VcpuStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let kinds: Vec<CountTime> = ExitKind::ALL
            .iter()
            .map(|k| CountTime::new(k.name(), self.kinds[*k as usize].snapshot()))
            .collect();
        let ports: Vec<CountTime> = PortGroup::ALL
            .iter()
            .map(|g| CountTime::new(g.name(), self.ports[*g as usize].snapshot()))
            .collect();
        let count = |k: &[ExitKind]| {
            k.iter()
                .map(|k| self.kinds[*k as usize].count.load(Ordering::Relaxed))
                .sum()
        };
        VcpuStatsSnapshot {
            exits: get(&self.exits),
            io: count(&[ExitKind::IoIn, ExitKind::IoOut]),
            mmio: count(&[ExitKind::MmioRead, ExitKind::MmioWrite]),
            msr: count(&[ExitKind::MsrRead, ExitKind::MsrWrite]),
            msr_gp: get(&self.msr_gp),
            interrupted: count(&[ExitKind::Interrupted]),
            emulation_assists: get(&self.emulation_assists),
            final_rip: get(&self.final_rip),
            debug_exits: count(&[ExitKind::Debug]),
            kvm_run_ns: get(&self.kvm_run_ns),
            cpu_ns: get(&self.cpu_ns),
            kinds,
            ports,
        }
    }
}

/// A named count with the host time spent on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountTime {
    /// The exit kind or port group.
    pub name: &'static str,
    /// How many.
    pub count: u64,
    /// Host nanoseconds hvkvm spent handling them (outside KVM_RUN).
    pub host_ns: u64,
}

impl CountTime {
    fn new(name: &'static str, (count, host_ns): (u64, u64)) -> Self {
        CountTime {
            name,
            count,
            host_ns,
        }
    }

    /// Adds `other` (same name) to this one.
    pub fn add(&mut self, other: &CountTime) {
        self.count += other.count;
        self.host_ns += other.host_ns;
    }
}

/// A copy of [`VcpuStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VcpuStatsSnapshot {
    /// Every return from KVM_RUN, EINTR included.
    pub exits: u64,
    /// Port I/O exits.
    pub io: u64,
    /// MMIO exits.
    pub mmio: u64,
    /// User-space RDMSR/WRMSR exits.
    pub msr: u64,
    /// See [`VcpuStats::msr_gp`].
    pub msr_gp: u64,
    /// KVM_RUN returns caused by a kick (EINTR).
    pub interrupted: u64,
    /// See [`VcpuStats::emulation_assists`].
    pub emulation_assists: u64,
    /// See [`VcpuStats::final_rip`].
    pub final_rip: u64,
    /// KVM_EXIT_DEBUG exits (host-quirk breakpoints).
    pub debug_exits: u64,
    /// Nanoseconds inside KVM_RUN (guest execution and KVM's in-kernel exit handling).
    pub kvm_run_ns: u64,
    /// CPU time the vCPU thread used (guest emulation included where the host emulates).
    pub cpu_ns: u64,
    /// Exits by [`ExitKind`], in [`ExitKind::ALL`] order, with hvkvm's handling time.
    pub kinds: Vec<CountTime>,
    /// Port-I/O exits by [`PortGroup`], in [`PortGroup::ALL`] order.
    pub ports: Vec<CountTime>,
}

impl VcpuStatsSnapshot {
    /// Adds a later run's counts of the same vCPU (restored snapshots); RIP is the later one.
    pub fn add(&mut self, g: &VcpuStatsSnapshot) {
        self.exits += g.exits;
        self.io += g.io;
        self.mmio += g.mmio;
        self.msr += g.msr;
        self.msr_gp += g.msr_gp;
        self.interrupted += g.interrupted;
        self.emulation_assists += g.emulation_assists;
        self.debug_exits += g.debug_exits;
        self.kvm_run_ns += g.kvm_run_ns;
        self.cpu_ns += g.cpu_ns;
        self.final_rip = g.final_rip;
        merge(&mut self.kinds, &g.kinds);
        merge(&mut self.ports, &g.ports);
    }

    /// Host nanoseconds hvkvm spent handling exits (all kinds).
    pub fn host_ns(&self) -> u64 {
        self.kinds.iter().map(|k| k.host_ns).sum()
    }
}

fn merge(total: &mut Vec<CountTime>, more: &[CountTime]) {
    for m in more {
        match total.iter_mut().find(|t| t.name == m.name) {
            Some(t) => t.add(m),
            None => total.push(m.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_counted_by_kind_and_port_with_their_host_time() {
        let s = VcpuStats::default();
        s.exit(ExitKind::IoOut, Some(0x3f8));
        s.handled(Duration::from_nanos(100));
        s.exit(ExitKind::IoIn, Some(0x3fd));
        s.handled(Duration::from_nanos(50));
        s.exit(ExitKind::IoIn, Some(0x71));
        s.handled(Duration::from_nanos(7));
        s.exit(ExitKind::MsrRead, None);
        s.handled(Duration::from_nanos(1000));
        s.ran(Duration::from_micros(3));
        let snap = s.snapshot();
        assert_eq!((snap.exits, snap.io, snap.msr, snap.mmio), (4, 3, 1, 0));
        assert_eq!(snap.kvm_run_ns, 3000);
        assert_eq!(snap.host_ns(), 1157);
        let port = |n: &str| snap.ports.iter().find(|p| p.name == n).unwrap().clone();
        assert_eq!((port("serial").count, port("serial").host_ns), (2, 150));
        assert_eq!((port("cmos").count, port("cmos").host_ns), (1, 7));
        assert_eq!(port("pit").count, 0);
        let mut total = snap.clone();
        total.add(&snap);
        assert_eq!(total.exits, 8);
        assert_eq!(total.ports[0].count, 4);
    }

    #[test]
    fn pc_ports_fall_in_their_groups() {
        assert_eq!(PortGroup::of(0x43), PortGroup::Pit);
        assert_eq!(PortGroup::of(0x61), PortGroup::Pit);
        assert_eq!(PortGroup::of(0x64), PortGroup::I8042);
        assert_eq!(PortGroup::of(0x70), PortGroup::Cmos);
        assert_eq!(PortGroup::of(0xcfc), PortGroup::Pci);
        assert_eq!(PortGroup::of(0x3fd), PortGroup::Serial);
        assert_eq!(PortGroup::of(0x2f8), PortGroup::Other);
    }
}
