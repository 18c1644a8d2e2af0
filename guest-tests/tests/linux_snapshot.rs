//! Debian's cloud kernel, as a Hyper-V guest of the user backend on 1 vCPU, snapshotted in the
//! middle of its boot, the VM dropped, and the snapshot restored into a fresh VM: the restored
//! kernel must reach its initramfs `/init`, still on the reference TSC page clocksource, and
//! power off.
//!
//! Needs `scripts/linux-guest.sh` (run by `scripts/test.sh`); without its output the test
//! prints `SKIP:`, unless HVKVM_REQUIRE_LINUX=1. One boot of 6-9 minutes on hosts that emulate
//! guest kernel code.

use std::time::{Duration, Instant};

use guest_tests::{error_chain, require_kvm};
use hvkvm::boot::linux::LinuxImage;
use hvkvm::cli::run::linux_cmdline;
use hvkvm::devices::serial::{CaptureBuffer, Tee};
use hvkvm::host_quirks::{HostQuirks, QuirksMode};
use hvkvm::hyperv::{BackendChoice, CrashAction, HvConfig};
use hvkvm::kvm::HostProbe;
use hvkvm::snapshot::{SnapshotKind, SnapshotReader};
use hvkvm::vm::{RestoreParams, RunEvent, StopReason, Vm, VmConfig};

const BOOT_TIMEOUT: Duration = Duration::from_secs(1200);
/// When to take the snapshot: well inside the kernel's boot (it reaches /init after about
/// 250-350 s on the development hosts), overridable with HVKVM_LINUX_SNAPSHOT_AT=SECONDS.
const SNAPSHOT_AT: Duration = Duration::from_secs(120);

#[test]
fn debian_kernel_snapshotted_mid_boot_reaches_init_after_restore() {
    require_kvm!();
    let Some(dir) = guest_tests::linux_guest_for_test() else {
        return;
    };
    let host = HostProbe::probe().expect("probe");
    let quirks = HostQuirks::resolve(QuirksMode::Auto, host.is_pvm());
    let cmdline = linux_cmdline(None, quirks, 1);
    let image = LinuxImage {
        kernel: std::fs::read(dir.join("vmlinuz")).unwrap(),
        initrd: Some(std::fs::read(dir.join("initramfs.cpio")).unwrap()),
        cmdline,
    };
    let mut request = hv_model::parse_hv_list("kvm=off").unwrap();
    request.profile = Some(hv_model::Profile::Linux);
    let resolution = hvkvm::hyperv::resolve_for_vm(&request, &host, BackendChoice::User)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)))
        .expect("a Hyper-V selection");
    let mut config = VmConfig::new(hvkvm::vm::BootSource::Linux(image));
    config.hypervisor_leaves = Some(hvkvm::hyperv::cpuid_entries(&resolution));
    config.hyperv = HvConfig::from_resolution(&resolution, CrashAction::Log);
    config.memory_mib = 512;
    config.timeout = Some(BOOT_TIMEOUT);
    let capture = CaptureBuffer::default();
    let log = std::env::temp_dir().join("hvkvm-linux-snapshot.log");
    eprintln!(
        "Linux (Hyper-V, snapshot mid-boot): console in {}",
        log.display()
    );
    let file = std::fs::File::create(&log).expect("console log");
    config.serial = Box::new(Tee(Box::new(file), Box::new(capture.clone())));

    let at = std::env::var("HVKVM_LINUX_SNAPSHOT_AT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(SNAPSHOT_AT, Duration::from_secs);
    let started = Instant::now();
    let running = Vm::new(config)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)))
        .start()
        .unwrap();
    assert_eq!(
        running.wait_event(Some(at)),
        RunEvent::TimedOut,
        "the boot ended early"
    );
    let handle = running.handle();
    assert!(handle.pause());
    assert!(
        !capture.contents().contains("HVKVM-INIT"),
        "the snapshot must be taken before /init"
    );
    let snap = std::env::temp_dir().join(format!("hvkvm-linux-snap-{}", std::process::id()));
    let info = handle
        .snapshot(&snap, SnapshotKind::SameHost)
        .unwrap_or_else(|e| panic!("snapshot: {}", error_chain(&e)));
    eprintln!(
        "snapshot after {:.0} s: {} non-zero pages, {:.1} MiB on disk, {:.0} ms",
        started.elapsed().as_secs_f64(),
        info.ram_nonzero_pages,
        info.disk_bytes as f64 / (1 << 20) as f64,
        info.elapsed_ms
    );
    handle.stop(StopReason::HostCheck {
        vcpu: 0,
        message: "dropped after its snapshot".into(),
    });
    drop(running.finish());

    let reader = SnapshotReader::open(&snap).unwrap();
    let file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let mut params = RestoreParams::new(Box::new(Tee(Box::new(file), Box::new(capture.clone()))));
    params.timeout = Some(BOOT_TIMEOUT);
    let restored =
        Vm::restore(&reader, params).unwrap_or_else(|e| panic!("restore: {}", error_chain(&e)));
    let outcome = restored.run().unwrap();
    let serial = capture.contents();
    let _ = std::fs::remove_dir_all(&snap);
    eprintln!(
        "restored Linux: {} after {:.0} s more",
        outcome.reason,
        outcome.elapsed.as_secs_f64()
    );
    assert!(
        serial.contains("HVKVM-INIT: reached /init"),
        "/init not reached after the restore"
    );
    assert!(
        serial.contains("HVKVM-CLOCKSOURCE: hyperv_clocksource_tsc_page"),
        "the restored kernel left the TSC page clocksource"
    );
    assert_eq!(outcome.reason, StopReason::PowerOff);
}
