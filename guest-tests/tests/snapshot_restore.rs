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

/// Restored where the TSC runs at another rate, without TSC scaling: the guest that enabled
/// reenlightenment gets its interrupt, TSC_EMULATION_STATUS, the new TSC_FREQUENCY and an
/// invalid TSC page until it acknowledges; reference time never jumps. This host has no TSC
/// scaling, so the snapshot is rewritten to say the guest ran 25% faster than this host does.
#[test]
fn reenlightenment_after_a_restore_at_another_tsc_rate() {
    use hvkvm::snapshot::format::Manifest;
    use hvkvm::snapshot::{SnapshotReader, SnapshotWriter};
    use hvkvm::vm::{RestoreParams, RunEvent, StopReason, Vm};
    require_kvm!();
    let (config, serial) = GuestTest::new("hv_reenlightenment")
        .hyperv(
            "hv-time,hv-frequencies,hv-reenlightenment",
            CrashAction::Log,
        )
        .into_config();
    let vm = Vm::new(config).unwrap();
    vm.control().set_pause_on_sync(true);
    let running = vm.start().unwrap();
    assert_eq!(running.wait_event(None), RunEvent::Paused);
    let base = std::env::temp_dir().join(format!("hvkvm-reenl-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    let h = running.handle();
    assert!(h.pause());
    h.snapshot(&a, hvkvm::snapshot::SnapshotKind::SameHost)
        .unwrap();
    h.stop(StopReason::PowerOff);
    let first = running.finish();
    let [hz_before, time_before, seq_before, ..] = first.syncs[0].values;
    assert_ne!(seq_before, 0);

    // The snapshot as if taken on a host whose TSC ran 25% faster.
    let reader = SnapshotReader::open(&a).unwrap();
    let mut manifest: Manifest = reader.manifest().clone();
    let fake_khz = manifest.guest_tsc_khz / 4 * 5;
    manifest.guest_tsc_khz = fake_khz;
    let mem = hvkvm::memory::allocate(manifest.config.memory_mib).unwrap();
    reader.load_ram(&mem).unwrap();
    let mut w = SnapshotWriter::create(&b).unwrap();
    let (vcpu0, _): (serde_json::Value, _) = reader.read_json("vcpu-0").unwrap();
    w.add_json("vcpu-0", &vcpu0).unwrap();
    let (mut vm_file, _): (serde_json::Value, _) = reader.read_json("vm").unwrap();
    vm_file["hyperv_user"]["tsc_hz"] = serde_json::json!(u64::from(fake_khz) * 1000);
    w.add_json("vm", &vm_file).unwrap();
    w.add_ram(&mem).unwrap();
    w.commit(manifest).unwrap();

    let reader = SnapshotReader::open(&b).unwrap();
    let mut p = RestoreParams::new(Box::new(serial.clone()));
    p.timeout = Some(std::time::Duration::from_secs(30));
    let outcome = Vm::restore(&reader, p)
        .unwrap_or_else(|e| panic!("{}", guest_tests::error_chain(&e)))
        .run()
        .unwrap();
    assert_eq!(
        outcome.reason,
        StopReason::GuestDone,
        "{}",
        serial.contents()
    );
    let s2 = outcome.syncs.iter().find(|s| s.stage == 2).unwrap().values;
    let [pending, status, hz_after, seq_invalid, time_after, _] = s2;
    assert_eq!(
        pending, 1,
        "the reenlightenment interrupt is pending at vector 0xEC"
    );
    assert_eq!(status, 1, "TSC_EMULATION_STATUS.InProgress");
    assert_eq!(
        hz_after, hz_before,
        "TSC_FREQUENCY is this host's (real) rate"
    );
    assert_eq!(
        seq_invalid, 0,
        "the TSC page is invalid until the guest acknowledges"
    );
    assert!(time_after >= time_before, "reference time went backwards");
    assert!(
        time_after - time_before < 10_000_000,
        "reference time jumped"
    );
    let s3 = outcome.syncs.iter().find(|s| s.stage == 3).unwrap().values;
    let [seq, page, before, after, ..] = s3;
    assert_ne!(seq, 0, "republished after the acknowledgement");
    assert!(page + 10_000 >= before && page <= after + 10_000, "{s3:?}");
    let _ = std::fs::remove_dir_all(&base);
}

/// Without scaling or reenlightenment, a restore at another TSC rate is refused.
#[test]
fn a_restore_at_another_tsc_rate_without_reenlightenment_is_refused() {
    use hvkvm::snapshot::{SnapshotReader, SnapshotWriter};
    use hvkvm::vm::{RestoreParams, Vm};
    require_kvm!();
    let (config, _serial) = GuestTest::new("hv_tsc_page")
        .hyperv("hv-time,hv-frequencies", CrashAction::Log)
        .into_config();
    let vm = Vm::new(config).unwrap();
    vm.control().set_pause_on_sync(true);
    let running = vm.start().unwrap();
    let base = std::env::temp_dir().join(format!("hvkvm-tscrule-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    running.wait_event(None);
    let h = running.handle();
    assert!(h.pause());
    h.snapshot(&a, hvkvm::snapshot::SnapshotKind::SameHost)
        .unwrap();
    h.stop(hvkvm::vm::StopReason::PowerOff);
    running.finish();
    let reader = SnapshotReader::open(&a).unwrap();
    let mut manifest = reader.manifest().clone();
    manifest.guest_tsc_khz = manifest.guest_tsc_khz / 4 * 5;
    let mem = hvkvm::memory::allocate(manifest.config.memory_mib).unwrap();
    reader.load_ram(&mem).unwrap();
    let mut w = SnapshotWriter::create(&b).unwrap();
    for role in ["vcpu-0", "vm"] {
        let (v, _): (serde_json::Value, _) = reader.read_json(role).unwrap();
        w.add_json(role, &v).unwrap();
    }
    w.add_ram(&mem).unwrap();
    w.commit(manifest).unwrap();
    let reader = SnapshotReader::open(&b).unwrap();
    let e = Vm::restore(&reader, RestoreParams::new(Box::new(std::io::sink())))
        .map(|_| ())
        .unwrap_err();
    let e = guest_tests::error_chain(&e);
    assert!(
        e.contains("not offered hv-reenlightenment") && e.contains("TSC scaling"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// A snapshot for migration is refused while the guest has a migration blocker, naming it and
/// saying that a same-host snapshot is allowed; a same-host snapshot is refused on another
/// host.
#[test]
fn migration_blockers_and_same_host_snapshots() {
    use hvkvm::snapshot::{SnapshotKind, SnapshotReader, SnapshotWriter};
    use hvkvm::vm::{RestoreParams, StopReason, Vm};
    require_kvm!();
    let (config, _serial) = GuestTest::new("hv_tsc_page")
        .hyperv("hv-time,hv-no-nonarch-coresharing=auto", CrashAction::Log)
        .into_config();
    let vm = Vm::new(config).unwrap();
    vm.control().set_pause_on_sync(true);
    let running = vm.start().unwrap();
    running.wait_event(None);
    let h = running.handle();
    assert!(h.pause());
    let base = std::env::temp_dir().join(format!("hvkvm-blockers-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    let e = h
        .snapshot(&a, SnapshotKind::Migration)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no-nonarch-coresharing") && e.contains("same-host snapshot"),
        "{e}"
    );
    assert!(!a.join("manifest.json").exists(), "nothing written");
    assert!(!h.info().migration_blockers.is_empty());
    h.snapshot(&a, SnapshotKind::SameHost).unwrap();
    h.stop(StopReason::PowerOff);
    running.finish();

    // The same snapshot, as if taken on another machine.
    let reader = SnapshotReader::open(&a).unwrap();
    let mut manifest = reader.manifest().clone();
    manifest.host.machine_id = "another-machine".into();
    let mem = hvkvm::memory::allocate(manifest.config.memory_mib).unwrap();
    reader.load_ram(&mem).unwrap();
    let mut w = SnapshotWriter::create(&b).unwrap();
    for role in ["vcpu-0", "vm"] {
        let (v, _): (serde_json::Value, _) = reader.read_json(role).unwrap();
        w.add_json(role, &v).unwrap();
    }
    w.add_ram(&mem).unwrap();
    w.commit(manifest).unwrap();
    let reader = SnapshotReader::open(&b).unwrap();
    let e = Vm::restore(&reader, RestoreParams::new(Box::new(std::io::sink())))
        .map(|_| ())
        .unwrap_err();
    let e = guest_tests::error_chain(&e);
    assert!(
        e.contains("same-host snapshot") && e.contains("--for-migration"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn synic_timer_ipi_and_flush_tests_pass_with_a_restore_at_every_sync() {
    require_kvm!();
    // The SynIC MSRs, the timers (armed across SYNCs) and the usage counters move with each
    // snapshot; the suites' own assertions then hold for the last VM as for one plain run.
    let suites = guest_tests::suites::hyperv_stimer::cases()
        .into_iter()
        .chain(guest_tests::suites::hyperv_ipi_flush::cases());
    for case in suites {
        eprintln!("{} with a restore at every SYNC", case.name);
        guest_tests::snapshot_mode::at_every_sync(case.run);
    }
}
