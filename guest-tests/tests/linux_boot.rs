//! Debian's cloud kernel boots to its initramfs `/init` on 2 vCPUs and powers off with
//! `--profile linux --hv kvm=off` as a Hyper-V guest of the user backend, where it must run on
//! the reference TSC page and the synthetic timer (direct mode) on both CPUs, send IPIs and
//! flush remote TLBs with hypercalls. The plain KVM boot (1 vCPU, with a snapshot and restore
//! in the middle) is tests/linux_snapshot.rs; HVKVM_LINUX_ALL=1 adds plain boots on 1 and 2
//! vCPUs here.
//!
//! Needs `scripts/linux-guest.sh` (run by `scripts/test.sh`); without its output the test
//! prints `SKIP:`, unless HVKVM_REQUIRE_LINUX=1, where a missing guest is a failure. Each
//! boot takes about five minutes on hosts that emulate guest kernel code.

use std::path::Path;
use std::time::Duration;

use guest_tests::{error_chain, require_kvm};
use hvkvm::boot::linux::LinuxImage;
use hvkvm::cli::run::linux_cmdline;
use hvkvm::devices::serial::{CaptureBuffer, Tee};
use hvkvm::host_quirks::{HostQuirks, QuirksMode};
use hvkvm::hyperv::{BackendChoice, CrashAction, HvConfig};
use hvkvm::kvm::HostProbe;
use hvkvm::vm::{self, BootSource, StopReason, VmConfig};

/// Generous: a boot took 400–550 s on the development hosts (kvm_pvm, 2 cores).
const BOOT_TIMEOUT: Duration = Duration::from_secs(1200);

/// The Hyper-V selection of the Hyper-V boot: Linux's profile, with KVM's own leaves hidden
/// (Linux prefers KVM when it sees both, and would then never run its Hyper-V code).
const HYPERV_LINUX: &str = "kvm=off";

struct Boot {
    reason: StopReason,
    serial: String,
    elapsed: Duration,
    hyperv: Option<hvkvm::hyperv::report::UsageReport>,
}

/// Kernel command line additions of the Hyper-V boot: the initramfs runs its TLB shootdown
/// loop and remap check (so that the flush hypercall is used for certain, and checked).
const HYPERV_CMDLINE: &str = " hvkvm.tlbbench=50";

fn boot(dir: &Path, cpus: u32, hyperv: bool) -> Boot {
    let host = HostProbe::probe().expect("probe");
    let quirks = HostQuirks::resolve(QuirksMode::Auto, host.is_pvm());
    let mut cmdline = linux_cmdline(None, quirks, cpus);
    if hyperv {
        cmdline.push_str(HYPERV_CMDLINE);
    }
    let image = LinuxImage {
        kernel: std::fs::read(dir.join("vmlinuz")).unwrap(),
        initrd: Some(std::fs::read(dir.join("initramfs.cpio")).unwrap()),
        cmdline,
    };
    let capture = CaptureBuffer::default();
    let mut config = VmConfig::new(BootSource::Linux(image));
    if hyperv {
        let mut request = hv_model::parse_hv_list(HYPERV_LINUX).unwrap();
        request.profile = Some(hv_model::Profile::Linux);
        let resolution = hvkvm::hyperv::resolve_for_vm(&request, &host, BackendChoice::User)
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)))
            .expect("a Hyper-V selection");
        config.hypervisor_leaves = Some(hvkvm::hyperv::cpuid_entries(&resolution));
        config.hyperv = HvConfig::from_resolution(&resolution, CrashAction::Log);
    }
    config.cpus = cpus;
    config.memory_mib = 512;
    config.timeout = Some(BOOT_TIMEOUT);
    // Keep a copy of the console in a file, so a failure shows how far the kernel got.
    let kind = if hyperv { "hyperv" } else { "kvm" };
    let log = std::env::temp_dir().join(format!("hvkvm-linux-{kind}-{cpus}cpu.log"));
    eprintln!(
        "Linux ({kind}) on {cpus} vCPU(s): console in {}",
        log.display()
    );
    let file = std::fs::File::create(&log).expect("console log");
    config.serial = Box::new(Tee(Box::new(file), Box::new(capture.clone())));
    let outcome = vm::run(config).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    Boot {
        reason: outcome.reason,
        serial: capture.contents(),
        elapsed: outcome.elapsed,
        hyperv: outcome.hyperv,
    }
}

#[test]
fn debian_kernel_boots_as_a_hyper_v_guest_on_2_vcpus() {
    require_kvm!();
    let Some(dir) = guest_tests::linux_guest_for_test() else {
        return;
    };
    // One boot at a time, each as short as it can be (a boot takes minutes on hosts that
    // emulate guest kernel code): Hyper-V on 2 vCPUs; HVKVM_LINUX_ALL=1 adds plain KVM on 1 and
    // 2 vCPUs. Never more vCPUs than host cores: on such hosts an overcommitted SMP guest was
    // seen to livelock in stop_machine() (soft lockups on both vCPUs). So a 2-vCPU boot holds
    // every core (guest_tests::host_cores), which the emulated Intel host's Bochs also takes.
    let mut plan = vec![(2u32, true)];
    if std::env::var("HVKVM_LINUX_ALL").as_deref() == Ok("1") {
        plan.extend([(1, false), (2, false)]);
    }
    let boots: Vec<_> = plan
        .into_iter()
        .map(|(cpus, hyperv)| {
            let _cores = (cpus > 1).then(|| {
                guest_tests::host_cores::hold_all_cores("the 2-vCPU Linux boot")
                    .expect("the host-cores lock")
            });
            (cpus, hyperv, boot(&dir, cpus, hyperv))
        })
        .collect();
    for (cpus, hyperv, b) in boots {
        let what = format!(
            "Linux ({}) on {cpus} vCPU(s)",
            if hyperv { "Hyper-V" } else { "KVM" }
        );
        eprintln!(
            "{what}: {} after {:.0} s",
            b.reason,
            b.elapsed.as_secs_f64()
        );
        assert!(
            b.serial.contains("HVKVM-INIT: reached /init"),
            "{what}: /init not reached"
        );
        assert!(
            b.serial.contains(&format!("HVKVM-CPUS: {cpus}")),
            "{what}: the guest did not see {cpus} processors"
        );
        assert_eq!(b.reason, StopReason::PowerOff, "{what}: expected poweroff");
        if hyperv {
            check_hyperv_guest(&what, &b);
        }
    }
}

/// The `HVKVM-<tag>: ` lines of the console, without the tag.
fn lines<'a>(serial: &'a str, tag: &str) -> Vec<&'a str> {
    let prefix = format!("HVKVM-{tag}: ");
    serial
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix(prefix.as_str()))
        .collect()
}

/// Linux detected Hyper-V, enabled the hypercall page, runs on the reference TSC page and on
/// the synthetic timer in direct mode on both CPUs (taking its interrupts on both), and sends
/// IPIs and remote TLB flushes by hypercall.
fn check_hyperv_guest(what: &str, b: &Boot) {
    assert!(
        b.serial.contains("HVKVM-HYPERVISOR:") && b.serial.contains("Microsoft Hyper-V"),
        "{what}: Linux did not detect Hyper-V"
    );
    assert!(
        b.serial
            .contains("HVKVM-CLOCKSOURCE: hyperv_clocksource_tsc_page"),
        "{what}: Linux does not use the TSC page clocksource"
    );
    let report = b.hyperv.as_ref().expect("a Hyper-V usage report");
    eprintln!("{what}:\n{}", report.render());
    assert!(
        report.hypercall_page.is_some(),
        "{what}: hypercall page not enabled"
    );
    assert!(report.tsc_page.is_some(), "{what}: TSC page not enabled");
    let os = report.guest_os_id.as_ref().expect("GUEST_OS_ID written");
    assert!(
        os.decoded.starts_with("Linux"),
        "{what}: guest OS ID {}",
        os.decoded
    );
    // The clock event device of every CPU is the synthetic timer.
    let events = lines(&b.serial, "CLOCKEVENT");
    assert_eq!(events.len(), 2, "{what}: clock event devices {events:?}");
    assert!(
        events.iter().all(|e| e.contains("Hyper-V clockevent")),
        "{what}: clock event devices {events:?}"
    );
    // Its interrupts arrive on both CPUs ("HVS: <cpu0> <cpu1> Hyper-V stimer0 interrupts").
    let hvs = lines(&b.serial, "IRQ")
        .into_iter()
        .find(|l| l.trim_start().starts_with("HVS:"))
        .unwrap_or_else(|| panic!("{what}: no HVS line in /proc/interrupts"));
    let counts: Vec<u64> = hvs
        .split_whitespace()
        .skip(1)
        .take(2)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    assert!(
        counts.len() == 2 && counts.iter().all(|n| *n > 0),
        "{what}: stimer interrupts per CPU: {hvs}"
    );
    let hv = lines(&b.serial, "HV").join("\n");
    for said in [
        "Using IPI hypercalls",
        "Using hypercall for remote TLB flush",
    ] {
        assert!(
            hv.contains(said),
            "{what}: Linux did not log '{said}':\n{hv}"
        );
    }
    // The report lists the timer MSRs and the hypercalls Linux used.
    for msr in ["STIMER0_CONFIG", "STIMER0_COUNT"] {
        assert!(report.msrs.contains_key(msr), "{what}: {msr} unused");
    }
    let succeeded = |call: &str| {
        report
            .hypercalls
            .get(call)
            .and_then(|s| s.get("SUCCESS"))
            .copied()
            .unwrap_or(0)
    };
    assert!(
        succeeded("SendSyntheticClusterIpi") + succeeded("SendSyntheticClusterIpiEx") > 0,
        "{what}: no IPI hypercall"
    );
    let flushes: u64 = [
        "FlushVirtualAddressSpace",
        "FlushVirtualAddressList",
        "FlushVirtualAddressSpaceEx",
        "FlushVirtualAddressListEx",
    ]
    .iter()
    .map(|c| succeeded(c))
    .sum();
    assert!(flushes > 0, "{what}: no TLB flush hypercall");
    // The shootdown program's remap check: a thread on CPU 1 never reads through a
    // translation that a remap on CPU 0 (and its flush hypercall) removed.
    let check = lines(&b.serial, "TLB-CHECK");
    assert!(
        check.len() == 1 && check[0].ends_with(" 0 stale reads"),
        "{what}: TLB remap check {check:?}"
    );
    assert!(
        report
            .events
            .get("stimer direct-mode interrupts")
            .copied()
            .unwrap_or(0)
            > 0,
        "{what}: no direct-mode timer interrupt"
    );
}
