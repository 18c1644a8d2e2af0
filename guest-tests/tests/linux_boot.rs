//! Debian's cloud kernel boots to its initramfs `/init` on 1 and 2 vCPUs and powers off.
//!
//! Needs `scripts/linux-guest.sh` (run by `scripts/test.sh`); without its output the test
//! prints `SKIP:`, unless HVKVM_REQUIRE_LINUX=1, where a missing guest is a failure. Each
//! boot takes about five minutes on hosts that emulate guest kernel code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_tests::{error_chain, require_kvm};
use hvkvm::boot::linux::LinuxImage;
use hvkvm::cli::run::{quirk_cmdline, DEFAULT_CMDLINE};
use hvkvm::devices::serial::{CaptureBuffer, Tee};
use hvkvm::host_quirks::{HostQuirks, QuirksMode};
use hvkvm::kvm::HostProbe;
use hvkvm::vm::{self, BootSource, StopReason, VmConfig};

/// Generous: a boot took 250–300 s on the development hosts.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

fn linux_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("HVKVM_LINUX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/linux-guest"
            ))
        });
    let present = dir.join("vmlinuz").exists() && dir.join("initramfs.cpio").exists();
    if !present && std::env::var("HVKVM_REQUIRE_LINUX").as_deref() == Ok("1") {
        panic!(
            "no Linux guest in {}: run scripts/linux-guest.sh",
            dir.display()
        );
    }
    present.then_some(dir)
}

fn boot(dir: &Path, cpus: u32) -> (StopReason, String, Duration) {
    let host = HostProbe::probe().expect("probe");
    let quirks = HostQuirks::resolve(QuirksMode::Auto, host.is_pvm());
    let mut cmdline = DEFAULT_CMDLINE.to_string();
    if let Some(extra) = quirk_cmdline(quirks) {
        cmdline = format!("{extra} {cmdline}");
    }
    if cpus == 1 {
        cmdline.push_str(" nosmp");
    }
    let image = LinuxImage {
        kernel: std::fs::read(dir.join("vmlinuz")).unwrap(),
        initrd: Some(std::fs::read(dir.join("initramfs.cpio")).unwrap()),
        cmdline,
    };
    let capture = CaptureBuffer::default();
    let mut config = VmConfig::new(BootSource::Linux(image));
    config.cpus = cpus;
    config.memory_mib = 512;
    config.timeout = Some(BOOT_TIMEOUT);
    // Keep a copy of the console in a file, so a failure shows how far the kernel got.
    let log = std::env::temp_dir().join(format!("hvkvm-linux-{cpus}cpu.log"));
    eprintln!("Linux on {cpus} vCPU(s): console in {}", log.display());
    let file = std::fs::File::create(&log).expect("console log");
    config.serial = Box::new(Tee(Box::new(file), Box::new(capture.clone())));
    let outcome = vm::run(config).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    (outcome.reason, capture.contents(), outcome.elapsed)
}

#[test]
fn debian_kernel_reaches_init_on_one_and_two_vcpus_and_powers_off() {
    require_kvm!();
    let Some(dir) = linux_dir() else {
        eprintln!("SKIP: no Linux guest: run scripts/linux-guest.sh first");
        return;
    };
    // Both boots at once: the 2-vCPU guest's second vCPU is idle most of the time, so the two
    // boots share the host's cores well and the test takes one boot's time, not two.
    let boots: Vec<_> = [1u32, 2]
        .into_iter()
        .map(|cpus| {
            let dir = dir.clone();
            std::thread::spawn(move || (cpus, boot(&dir, cpus)))
        })
        .collect();
    for handle in boots {
        let (cpus, (reason, serial, elapsed)) = handle.join().expect("boot thread panicked");
        eprintln!("Linux on {cpus} vCPU(s): {reason} after {:.0} s", elapsed.as_secs_f64());
        assert!(serial.contains("HVKVM-INIT: reached /init"), "{cpus} vCPU(s): /init not reached");
        assert!(
            serial.contains(&format!("HVKVM-CPUS: {cpus}")),
            "{cpus} vCPU(s): the guest did not see {cpus} processors"
        );
        assert_eq!(reason, StopReason::PowerOff, "{cpus} vCPU(s): expected poweroff");
    }
}
