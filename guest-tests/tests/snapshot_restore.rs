//! Snapshot and restore: guest tests run with a pause, snapshot, kill and restore at every
//! ucall SYNC (the harness's snapshot mode, `guest_tests::snapshot_mode`), and a guest
//! snapshotted mid-run that must finish with intact memory and monotonic reference time.
//!
//! `HVKVM_TEST_SNAPSHOT=1 cargo test -p guest-tests` runs every guest test in this mode.

use guest_tests::{require_kvm, GuestTest};
use hvkvm::cpu::CpuidEntry;
use hvkvm::hyperv::CrashAction;

#[test]
fn boot_contract_survives_a_restore_at_its_sync() {
    require_kvm!();
    let (run, restores) = GuestTest::new("boot_contract").cpus(2).run_with_snapshots();
    run.expect_done();
    assert_eq!(restores as usize, run.outcome.syncs.len());
    let [count, ram_top, ..] = run.sync(1).values;
    assert_eq!((count, ram_top), (2, 64 << 20));
}

#[test]
fn cpuid_leaves_survive_restores() {
    require_kvm!();
    let leaf = CpuidEntry {
        function: 0x4000_00f0,
        index: 0,
        eax: 0x1111,
        ebx: 0x2222,
        ecx: 0x3333,
        edx: 0x4444,
    };
    let (run, restores) = GuestTest::new("cpuid_leaf")
        .cpuid(leaf)
        .run_with_snapshots();
    run.expect_done();
    assert_eq!(restores, 2);
    assert_eq!(run.sync(2).values[..4], [0x1111, 0x2222, 0x3333, 0x4444]);
}

#[test]
fn fpu_and_idt_state_survive_restores() {
    require_kvm!();
    let (run, restores) = GuestTest::new("exception_catch").run_with_snapshots();
    run.expect_done();
    assert_eq!(restores, 3);
    assert_eq!(run.sync(1).values, [13, 13, 6, 13, 0, 5]);
    assert_eq!(
        run.sync(3).values[..4],
        [
            0x0011_2233_4455_6677,
            0x8899_aabb_ccdd_eeff,
            0x5555_0000_0000_0005,
            0x5555_0000_0000_1005
        ]
    );
}

#[test]
fn hyperv_reference_time_survives_restores() {
    require_kvm!();
    let (run, restores) = GuestTest::new("hv_tsc_page")
        .hyperv("hv-time,hv-frequencies", CrashAction::Log)
        .run_with_snapshots();
    run.expect_done();
    assert_eq!(restores, 4);
    let [enable_faulted, seq, ..] = run.sync(1).values;
    assert_eq!(enable_faulted, 0);
    assert_ne!(seq, 0);
    let [msr0, page0, msr1, page1, ..] = run.sync(2).values;
    assert!(msr0 != u64::MAX && page0 != u64::MAX);
    assert!(msr1 >= msr0 && page1 >= page0, "{:?}", run.sync(2).values);
    assert!(page0.abs_diff(msr0) < 10_000 && page1.abs_diff(msr1) < 10_000);
}

#[test]
fn a_guest_snapshotted_mid_run_finishes_with_intact_memory() {
    require_kvm!();
    // Two vCPUs for 2 s of reference time; the guest's SYNC comes at the end, so this pauses
    // and restores from the outside, twice, while both vCPUs run.
    let (config, serial) = GuestTest::new("snapshot_soak")
        .cpus(2)
        .hyperv("hv-time", CrashAction::Log)
        .params(&[[2, 0, 0, 0]])
        .into_config();
    let dir = std::env::temp_dir().join(format!("hvkvm-soak-{}", std::process::id()));
    let mut running = hvkvm::vm::Vm::new(config).unwrap().start().unwrap();
    for round in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(600));
        let h = running.handle();
        assert!(h.pause());
        h.snapshot(&dir, hvkvm::snapshot::SnapshotKind::SameHost)
            .unwrap_or_else(|e| panic!("round {round}: {}", guest_tests::error_chain(&e)));
        h.stop(hvkvm::vm::StopReason::PowerOff);
        running.finish();
        let reader = hvkvm::snapshot::SnapshotReader::open(&dir).unwrap();
        let mut p = hvkvm::vm::RestoreParams::new(Box::new(serial.clone()));
        p.timeout = Some(std::time::Duration::from_secs(60));
        running = hvkvm::vm::Vm::restore(&reader, p)
            .unwrap_or_else(|e| panic!("round {round}: {}", guest_tests::error_chain(&e)))
            .start()
            .unwrap();
    }
    let outcome = running.finish();
    let out = serial.contents();
    assert_eq!(outcome.reason, hvkvm::vm::StopReason::GuestDone, "{out}");
    let [finished, max_step, reads, page_checks, ..] = outcome.syncs[0].values;
    assert_eq!(finished, 2);
    assert!(
        reads > 0 && page_checks > 0,
        "{:?}",
        outcome.syncs[0].values
    );
    // No jump: the largest step between two reads is well under a second.
    assert!(
        max_step < 5_000_000,
        "reference time jumped by {max_step} x 100 ns"
    );
    assert!(out.contains("soak done"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
