//! Host-side harness for hvkvm's guest tests.
//!
//! Each test runs one guest payload (`guest/src/bin/<name>.rs`, compiled by this crate's build
//! script) in a fresh VM with a timeout, and checks what the VM reported: its stop reason,
//! ucall SYNC values, serial output. A failed guest assertion panics with the guest's
//! file:line and message.
//!
//! The test tables live in [`suites`], so that the same cases run on this machine's KVM
//! ([`harness::run_local`], the `tests/` targets) and inside the emulated Intel VMX host
//! ([`intel_host`], `tests/intel_host.rs`, the `hvkvm-suites` runner inside it).

pub mod cpuid_compare;
pub mod harness;
pub mod host_cores;
pub mod intel_host;
pub mod l1;
pub mod report;
pub mod suites;

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hvkvm::cpu::CpuidEntry;
use hvkvm::devices::bus::PioDevice;
use hvkvm::devices::serial::CaptureBuffer;
use hvkvm::vcpu::msr::MsrHandler;
use hvkvm::vm::{self, BootSource, StopReason, SyncEvent, VmConfig, VmOutcome};

pub mod nested;
pub mod snapshot_mode;

/// Directory holding the compiled guest payloads, set by `build.rs`.
pub const GUEST_DIR: &str = env!("HVKVM_GUEST_DIR");

/// Default limit for one guest run; payloads finish in well under a second.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The ELF file of the guest payload `name` (the file stem of `guest/src/bin/<name>.rs`).
///
/// `HVKVM_GUEST_DIR` in the environment replaces [`GUEST_DIR`]: inside the emulated Intel host
/// the payloads are not where this crate was built.
pub fn guest_binary(name: &str) -> PathBuf {
    match std::env::var_os("HVKVM_GUEST_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => Path::new(GUEST_DIR).join(name),
    }
}

/// Whether a missing /dev/kvm is a failure rather than a skip (`HVKVM_REQUIRE_KVM=1`, set by
/// scripts/test.sh, so that CI cannot pass by skipping every guest test).
pub fn kvm_required() -> bool {
    std::env::var("HVKVM_REQUIRE_KVM").as_deref() == Ok("1")
}

/// Returns why KVM tests cannot run here, if they cannot.
pub fn kvm_unavailable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm is not usable: {e}")),
    }
}

/// Skips the calling test (printing `SKIP: <reason>`) when /dev/kvm is not usable, or fails it
/// under `HVKVM_REQUIRE_KVM=1`.
#[macro_export]
macro_rules! require_kvm {
    () => {
        if let Some(reason) = $crate::kvm_unavailable() {
            if $crate::kvm_required() {
                panic!("{reason} (HVKVM_REQUIRE_KVM=1 makes this a failure)");
            }
            eprintln!("SKIP: {reason}");
            return;
        }
    };
}

thread_local! {
    static BACKEND_UNDER_TEST: std::cell::Cell<hvkvm::hyperv::BackendChoice> =
        const { std::cell::Cell::new(hvkvm::hyperv::BackendChoice::User) };
}

/// The Hyper-V backend [`GuestTest::hyperv`] and [`GuestTest::hyperv_leaves`] use on this
/// thread: the user backend, unless a case runs inside [`with_backend`].
pub fn backend_under_test() -> hvkvm::hyperv::BackendChoice {
    BACKEND_UNDER_TEST.with(|b| b.get())
}

/// Runs `f` with the Hyper-V guest tests of this thread on `backend` (how one table runs on
/// both backends).
pub fn with_backend<R>(backend: hvkvm::hyperv::BackendChoice, f: impl FnOnce() -> R) -> R {
    let previous = BACKEND_UNDER_TEST.with(|b| b.replace(backend));
    struct Restore(hvkvm::hyperv::BackendChoice);
    impl Drop for Restore {
        fn drop(&mut self) {
            BACKEND_UNDER_TEST.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(previous);
    f()
}

/// Whether the backend under test counts what the guest did in its usage report (MSR
/// accesses, every hypercall, timer events, refusals). The user backend sees every access;
/// KVM's in-kernel Hyper-V serves MSRs and most hypercalls in the kernel, so the kernel
/// backend's report holds the synthetic MSRs' values when the vCPU stopped, the hypercalls
/// KVM forwards and the SynIC exits, but no counts.
pub fn backend_counts_guest_use() -> bool {
    backend_under_test() != hvkvm::hyperv::BackendChoice::Kernel
}

/// Whether this host's KVM reports leaf `function` of `KVM_GET_SUPPORTED_HV_CPUID` with every
/// bit of `[eax, ebx, ecx, edx]` set (what the kernel backend can serve here).
pub fn kernel_hv_cpuid_has(function: u32, regs: [u32; 4]) -> bool {
    let probe = hvkvm::kvm::HostProbe::probe().expect("probe");
    probe
        .supported_hv_cpuid
        .unwrap_or_default()
        .iter()
        .any(|l| {
            l.function == function
                && [l.eax, l.ebx, l.ecx, l.edx]
                    .iter()
                    .zip(regs)
                    .all(|(have, want)| have & want == want)
        })
}

/// Where scripts/linux-guest.sh put Debian's kernel and the initramfs: `HVKVM_LINUX_DIR`, else
/// target/linux-guest; whether both files are there.
pub fn linux_guest_dir() -> (std::path::PathBuf, bool) {
    let dir = std::env::var_os("HVKVM_LINUX_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/linux-guest"
            ))
        });
    let present = dir.join("vmlinuz").exists() && dir.join("initramfs.cpio").exists();
    (dir, present)
}

/// [`linux_guest_dir`] for a test: `None`, after printing `SKIP:` with the reason, when the
/// guest is missing; a panic when `HVKVM_REQUIRE_LINUX=1` says it must be there.
pub fn linux_guest_for_test() -> Option<std::path::PathBuf> {
    let (dir, present) = linux_guest_dir();
    if !present {
        let why = format!(
            "no Linux guest in {}: run scripts/linux-guest.sh",
            dir.display()
        );
        if std::env::var("HVKVM_REQUIRE_LINUX").as_deref() == Ok("1") {
            panic!("{why} (HVKVM_REQUIRE_LINUX=1)");
        }
        eprintln!("SKIP: {why}");
    }
    present.then_some(dir)
}

/// One guest run being set up.
#[derive(Debug)]
pub struct GuestTest {
    config: VmConfig,
    serial: CaptureBuffer,
    name: String,
}

impl GuestTest {
    /// Payload `name` on 1 vCPU with 64 MiB and [`DEFAULT_TIMEOUT`].
    pub fn new(name: &str) -> Self {
        let path = guest_binary(name);
        let image = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("guest payload {} missing: {e}", path.display()));
        Self::from_image(name, image)
    }

    /// An arbitrary ELF image (for hand-assembled payloads).
    pub fn from_image(name: &str, image: Vec<u8>) -> Self {
        let serial = CaptureBuffer::default();
        let mut config = VmConfig::new(BootSource::Payload {
            image,
            name: name.to_string(),
        });
        config.memory_mib = 64;
        config.timeout = Some(DEFAULT_TIMEOUT);
        config.serial = Box::new(serial.clone());
        GuestTest {
            config,
            serial,
            name: name.to_string(),
        }
    }

    /// Sets the vCPU count.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.config.cpus = cpus;
        self
    }

    /// Sets guest RAM.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.config.memory_mib = mib;
        self
    }

    /// Sets the run's time limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// Adds a CPUID leaf.
    pub fn cpuid(mut self, entry: CpuidEntry) -> Self {
        self.config.cpuid_overrides.push(entry);
        self
    }

    /// Adds a user-space MSR handler.
    pub fn msr_handler(
        mut self,
        range: RangeInclusive<u32>,
        handler: impl MsrHandler + 'static,
    ) -> Self {
        self.config
            .msr_handlers
            .push((range, Arc::new(Mutex::new(handler))));
        self
    }

    /// Adds a port-I/O device.
    pub fn pio_device(mut self, base: u16, len: u16, device: Arc<Mutex<dyn PioDevice>>) -> Self {
        self.config.extra_pio.push((base, len, device));
        self
    }

    /// Gives the guest exactly these hypervisor CPUID leaves and the Hyper-V backend under test
    /// (see [`with_backend`]) reading its features from them, with enforce-CPUID semantics (how
    /// the conformance matrix sets bits per row).
    pub fn hyperv_leaves(mut self, leaves: Vec<CpuidEntry>) -> Self {
        let backend = match backend_under_test() {
            hvkvm::hyperv::BackendChoice::Kernel => hv_model::Backend::Kernel,
            _ => hv_model::Backend::User,
        };
        self.config.hyperv = Some(hvkvm::hyperv::HvConfig::raw(backend));
        self.config.hypervisor_leaves = Some(leaves);
        self
    }

    /// Resolves a `--hv`-style selection with the user backend on this host, as `hvkvm run`
    /// does, and configures the VM with it.
    pub fn hyperv(self, list: &str, on_crash: hvkvm::hyperv::CrashAction) -> Self {
        self.hyperv_on(backend_under_test(), list, on_crash)
    }

    /// As [`GuestTest::hyperv`], on the given backend.
    pub fn hyperv_on(
        mut self,
        choice: hvkvm::hyperv::BackendChoice,
        list: &str,
        on_crash: hvkvm::hyperv::CrashAction,
    ) -> Self {
        let request = hv_model::parse_hv_list(list).unwrap_or_else(|e| panic!("--hv {list}: {e}"));
        let host = hvkvm::kvm::HostProbe::probe().expect("probe");
        let resolution = hvkvm::hyperv::resolve_for_vm(&request, &host, choice)
            .unwrap_or_else(|e| panic!("--hv {list}: {}", error_chain(&e)))
            .expect("a selection");
        self.config.hypervisor_leaves = Some(hvkvm::hyperv::cpuid_entries(&resolution));
        self.config.hyperv = hvkvm::hyperv::HvConfig::from_resolution(&resolution, on_crash);
        self
    }

    /// Sets the payload parameter leaves 0x400000F0.. (payloads read their parameters there).
    pub fn params(mut self, leaves: &[[u32; 4]]) -> Self {
        for (i, regs) in leaves.iter().enumerate() {
            self.config.cpuid_overrides.push(CpuidEntry {
                function: 0x4000_00f0 + i as u32,
                index: 0,
                eax: regs[0],
                ebx: regs[1],
                ecx: regs[2],
                edx: regs[3],
            });
        }
        self
    }

    /// Changes the VM configuration directly (CPU model, nested VMX, a Hyper-V backend, ...).
    pub fn configure(mut self, f: impl FnOnce(&mut VmConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// The configuration, for tests that need the `Vm` API directly.
    pub fn into_config(self) -> (VmConfig, CaptureBuffer) {
        (self.config, self.serial)
    }

    /// Runs the VM to its end (in the snapshot harness mode when `HVKVM_TEST_SNAPSHOT=1`).
    pub fn run(self) -> TestRun {
        if snapshot_mode::requested() {
            return self.run_with_snapshots().0;
        }
        let outcome = vm::run(self.config)
            .unwrap_or_else(|e| panic!("cannot run guest '{}': {}", self.name, error_chain(&e)));
        assert!(
            outcome.stuck_vcpus.is_empty(),
            "vCPUs {:?} of '{}' did not stop",
            outcome.stuck_vcpus,
            self.name
        );
        TestRun {
            outcome,
            serial: self.serial.contents(),
            name: self.name,
        }
    }
}

impl GuestTest {
    /// Runs the VM with a pause, snapshot, kill and restore at every ucall SYNC
    /// ([`snapshot_mode`]); returns the run and the number of restores.
    pub fn run_with_snapshots(self) -> (TestRun, u32) {
        let run = snapshot_mode::run(self.config, self.serial.clone(), &self.name);
        assert!(
            run.outcome.stuck_vcpus.is_empty(),
            "vCPUs {:?} of '{}' did not stop",
            run.outcome.stuck_vcpus,
            self.name
        );
        (
            TestRun {
                outcome: run.outcome,
                serial: self.serial.contents(),
                name: self.name,
            },
            run.restores,
        )
    }
}

/// An error and all its causes on one line.
pub use hvkvm::cli::error_chain;

/// A finished guest run.
#[derive(Debug)]
pub struct TestRun {
    /// What the VM reported.
    pub outcome: VmOutcome,
    /// Everything the guest wrote to COM1.
    pub serial: String,
    name: String,
}

impl TestRun {
    /// The stop reason.
    pub fn reason(&self) -> &StopReason {
        &self.outcome.reason
    }

    /// Panics unless the guest reported DONE, with the guest's assertion (file:line) if any.
    pub fn expect_done(&self) -> &Self {
        if self.outcome.reason != StopReason::GuestDone {
            panic!(
                "guest '{}' did not pass: {}\n--- serial output ---\n{}",
                self.name, self.outcome.reason, self.serial
            );
        }
        self
    }

    /// The SYNC events of `stage`, in order.
    pub fn syncs(&self, stage: u64) -> Vec<&SyncEvent> {
        self.outcome
            .syncs
            .iter()
            .filter(|s| s.stage == stage)
            .collect()
    }

    /// The single SYNC of `stage`; panics if there is not exactly one.
    pub fn sync(&self, stage: u64) -> &SyncEvent {
        let syncs = self.syncs(stage);
        assert_eq!(
            syncs.len(),
            1,
            "guest '{}': expected one SYNC of stage {stage}: {:?}",
            self.name,
            self.outcome.syncs
        );
        syncs[0]
    }
}

pub use hvkvm::boot::payload::elf_from_code;
