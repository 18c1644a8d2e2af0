//! Nested VMX conformance rows, built on the L1 mini-hypervisor payload (`l1_hypervisor`, see
//! its file for the protocol) in its two modes, [`Mode::Vmcs`] (classic VMCS) and
//! [`Mode::Evmcs`] (the Hyper-V enlightened VMCS through the VP assist page).
//!
//! Each row is a function that panics on failure; `tests/nested_evmcs.rs` runs every row in both
//! modes. They need a host that can nest (Intel VMX with kvm_intel nested=1; the eVMCS mode also
//! in-kernel Hyper-V): elsewhere each row prints `SKIP: <reason>` ([`can_run`]) and returns,
//! unless `HVKVM_REQUIRE_NESTED=1`, which makes a skip a failure (set it wherever nesting must
//! work, such as inside the emulated Intel host).
//!
//! The VM configuration and the decoding of the payload's reports are hvkvm's own
//! (`hvkvm::bench::nested_cpuid`), shared with `hvkvm bench nested-cpuid`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvkvm::bench::nested_cpuid::{
    self as l1, flags, L1Params, L1Report, Mode, ANSWER_EAX, BENCH_LEAF, CR4_MASK, EXIT_HLT,
    PAYLOAD,
};
use hvkvm::kvm::HostProbe;
use hvkvm::vm::{StopReason, VmOutcome};

pub use hvkvm::bench::nested_cpuid::Mode as L1Mode;

use crate::{error_chain, GuestTest, TestRun};

/// `1`: a host that cannot nest fails the nested rows instead of skipping them.
pub const REQUIRE_ENV: &str = "HVKVM_REQUIRE_NESTED";

/// Guest-time limit of one payload run (inside the emulated Intel host a run takes seconds of
/// its slow clock).
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// A conformance row, run once per mode.
pub type Row = fn(Mode);

/// Every row, by name, in the order they run (each in both modes: `vmcs/<name>`,
/// `evmcs/<name>`).
pub const ROWS: &[(&str, Row)] = &[
    (
        "l2_sees_the_cpuid_values_l1_chose",
        l2_sees_the_cpuid_values_l1_chose,
    ),
    (
        "wrong_revision_fails_the_entry",
        wrong_revision_fails_the_entry,
    ),
    (
        "clean_fields_decide_what_l0_reloads",
        clean_fields_decide_what_l0_reloads,
    ),
    ("vmread_vmwrite_per_exit", vmread_vmwrite_per_exit),
    ("hv_report_shows_the_evmcs", hv_report_shows_the_evmcs),
    ("nested_state_round_trip", nested_state_round_trip),
];

/// Whether a skip must fail (`HVKVM_REQUIRE_NESTED=1`).
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).as_deref() == Ok("1")
}

/// Why nested rows in `mode` cannot run here, if they cannot.
pub fn unavailable(mode: Mode) -> Option<String> {
    match HostProbe::probe() {
        Err(e) => Some(format!("cannot probe the host: {}", error_chain(&e))),
        Ok(host) => l1::unavailable(&host, mode),
    }
}

/// True when nested rows in `mode` can run here. Otherwise prints `SKIP: <reason>` and returns
/// false, or panics under `HVKVM_REQUIRE_NESTED=1`.
pub fn can_run(mode: Mode) -> bool {
    match unavailable(mode) {
        None => true,
        Some(reason) if required() => {
            panic!("{reason} ({REQUIRE_ENV}=1 makes this a failure)")
        }
        Some(reason) => {
            eprintln!("SKIP: {reason}");
            false
        }
    }
}

/// Runs the payload as `p` says and decodes what it reported; panics (with the guest's output)
/// unless it finished with DONE.
pub fn run_l1(p: &L1Params) -> (L1Report, TestRun) {
    let host = HostProbe::probe().expect("probe the host");
    let run = GuestTest::new(PAYLOAD)
        .timeout(TIMEOUT)
        .configure(|c| {
            l1::configure(c, p, &host)
                .unwrap_or_else(|e| panic!("cannot configure {}: {}", p.mode, error_chain(&e)))
        })
        .run();
    run.expect_done();
    let report =
        L1Report::decode(p.mode, &run.outcome).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    (report, run)
}

fn params(mode: Mode, rounds: u32, flags: u32) -> L1Params {
    L1Params {
        flags,
        ..L1Params::new(mode, rounds)
    }
}

/// L2 sees exactly the CPUID values L1 chose, on every round trip; L1 really ran VMX (revision,
/// IA32_FEATURE_CONTROL, CR4.VMXE) and L2 ended with the HLT exit L1 expects.
pub fn l2_sees_the_cpuid_values_l1_chose(mode: Mode) {
    let rounds = 20;
    let (r, _) = run_l1(&params(mode, rounds, 0));
    let [m, revision, _true_ctls, feature, cr4, _] = r.setup;
    assert_eq!(
        m,
        u64::from(mode.param()),
        "the payload ran in another mode"
    );
    assert_ne!(revision, 0, "IA32_VMX_BASIC gave revision 0");
    assert_eq!(
        feature & 0b101,
        0b101,
        "IA32_FEATURE_CONTROL {feature:#x} not locked with VMXON outside SMX"
    );
    assert_ne!(cr4 & (1 << 13), 0, "CR4.VMXE clear after VMXON: {cr4:#x}");
    let l2 = r.l2.expect("SYNC 4 (what L2 saw)");
    assert_eq!(
        l2[..4],
        [u64::from(ANSWER_EAX), u64::from(!BENCH_LEAF), 0, 1],
        "L2's first CPUID answer is not L1's (EAX, EBX = !leaf, ECX = subleaf, EDX = exit count)"
    );
    assert_eq!(
        l2[4], 0,
        "answers that differed from L1's rule in later rounds"
    );
    assert_eq!(l2[5], EXIT_HLT, "L2 did not end with the HLT exit");
    let t = r.timing.expect("SYNC 3 (timing)");
    assert_eq!(t.exits, u64::from(rounds), "timed CPUID exits");
    assert!(t.p10 <= t.median && t.median <= t.p90 && t.p10 > 0, "{t:?}");
}

/// A wrong revision fails the entry as KVM documents: an eVMCS whose revision_id is neither 1
/// nor KVM's VMCS12 revision makes VMLAUNCH fail with VMfailInvalid (no usable current VMCS),
/// and VMLAUNCH works once the revision is 1 (reference §3.6, KVM's hyperv_evmcs selftest).
/// With a classic VMCS the same mistake fails VMPTRLD with VMfailInvalid (SDM: "VMPTRLD with
/// incorrect VMCS revision identifier", with no current VMCS to record the error in).
pub fn wrong_revision_fails_the_entry(mode: Mode) {
    let (r, _) = run_l1(&params(mode, 0, flags::REVISION_ROW));
    let [revision, first, error, retry, ..] = r.revision_row.expect("SYNC 6 (revision row)");
    assert_eq!(revision, 0xBAD0_0001, "the revision the row used");
    assert_eq!(
        first, 1,
        "a wrong revision must give VMfailInvalid (1), got {first} (0 = entered)"
    );
    assert_eq!(error, u64::MAX);
    assert_eq!(
        retry, 0,
        "with the right revision the {mode} must work (got VM-fail {retry})"
    );
}

/// The clean fields decide what L0 reloads (TLFS): L1 changes the CR4 read shadow (group CRDR)
/// without clearing its clean bit, and L2 still reads the old shadow after VMRESUME; once L1
/// clears the CRDR bit, L2 reads the new one. With a classic VMCS, VMWRITE takes effect at once.
pub fn clean_fields_decide_what_l0_reloads(mode: Mode) {
    let (r, _) = run_l1(&params(mode, 1, flags::CLEAN_ROW));
    let [before, kept_clean, dirtied, mask, old, new] = r.clean_row.expect("SYNC 5 (clean row)");
    assert_eq!((mask, old, new), (CR4_MASK, 0, CR4_MASK));
    assert_eq!(
        before, old,
        "L2 read CR4 {before:#x} & mask before any change"
    );
    match mode {
        Mode::Evmcs => {
            assert_eq!(
                kept_clean, old,
                "L0 picked up a CR4 read shadow changed with the CRDR clean bit still set"
            );
            assert_eq!(
                dirtied, new,
                "L0 ignored the new CR4 read shadow after CRDR was cleared"
            );
        }
        Mode::Vmcs => {
            assert_eq!(
                kept_clean, new,
                "VMWRITE of the CR4 read shadow did not take effect"
            );
            assert_eq!(dirtied, new);
        }
    }
}

/// What each exit costs L1 in VMX instructions: a classic VMCS needs 3 VMREADs (exit reason,
/// guest RIP, instruction length) and 1 VMWRITE (guest RIP) per CPUID exit; the eVMCS none at
/// all, neither per exit nor to set up.
pub fn vmread_vmwrite_per_exit(mode: Mode) {
    let rounds = 20;
    let (r, _) = run_l1(&params(mode, rounds, 0));
    let t = r.timing.expect("SYNC 3 (timing)");
    let (setup_reads, setup_writes) = r.setup_instructions();
    eprintln!(
        "{mode}: {} VMREADs + {} VMWRITEs per exit; setup {setup_reads} + {setup_writes}; \
         median {} cycles (p10 {}, p90 {})",
        t.vmreads_per_exit(),
        t.vmwrites_per_exit(),
        t.median,
        t.p10,
        t.p90
    );
    assert_eq!(t.exits, u64::from(rounds));
    match mode {
        Mode::Vmcs => {
            assert_eq!((t.vmreads, t.vmwrites), (3 * t.exits, t.exits), "{t:?}");
            assert_eq!(setup_reads, 0);
            assert!(setup_writes >= 60, "setup VMWRITEs: {setup_writes}");
        }
        Mode::Evmcs => {
            assert_eq!((t.vmreads, t.vmwrites), (0, 0), "{t:?}");
            assert_eq!((setup_reads, setup_writes), (0, 0));
        }
    }
}

/// The usage report shows the live eVMCS through the kernel backend: VP 0's assist page with
/// `enlighten_vmentry`, the eVMCS at `current_nested_vmcs` with revision 1, the version range
/// KVM agreed, and the key fields decoded (L2's end: HLT, no VM-instruction error). A classic
/// L1 has no Hyper-V at all, so no report.
pub fn hv_report_shows_the_evmcs(mode: Mode) {
    let (r, run) = run_l1(&params(mode, 5, 0));
    let report = run.outcome.hyperv.as_ref();
    if mode == Mode::Vmcs {
        assert!(report.is_none(), "a classic L1 got a Hyper-V report");
        return;
    }
    let report = report.expect("a Hyper-V report (kernel backend)");
    assert_eq!(report.backend, "kernel");
    let text = report.render();
    let view = report
        .vp_assist
        .first()
        .unwrap_or_else(|| panic!("no VP assist page:\n{text}"));
    assert_eq!(view.invalid, None, "{text}");
    assert!(view.enlighten_vmentry, "{text}");
    assert_eq!(view.evmcs_versions.as_deref(), Some("1..=1"), "{text}");
    let evmcs = view
        .evmcs
        .as_ref()
        .unwrap_or_else(|| panic!("no eVMCS decoded:\n{text}"));
    assert_eq!(evmcs.invalid, None, "{text}");
    assert_eq!((evmcs.revision_id, evmcs.revision_ok), (1, true), "{text}");
    assert_eq!(u64::from(evmcs.exit_reason), EXIT_HLT, "{text}");
    assert_eq!(evmcs.exit_reason_name, "HLT");
    assert_eq!(evmcs.vm_instruction_error, 0, "{text}");
    assert_ne!(evmcs.guest_rip, 0, "{text}");
    assert_eq!(r.l2.map(|l2| l2[5]), Some(EXIT_HLT));
    assert!(
        text.contains("enlighten_vmentry 1") && text.contains("L2 RIP"),
        "{text}"
    );
    eprintln!("{text}");
}

/// An unmodified Debian kernel as L1 with the enlightened VMCS: the `hvkvm run` options for L1
/// (with `--cpu host`, which the L1 booter adds): VMX, the kernel backend, QEMU's flag set for
/// a Linux L1 on Hyper-V (hv-evmcs, hv-vapic for the assist page, the KVM leaves hidden so that
/// Linux picks Hyper-V), and the report at the end.
pub const LINUX_L1_HVKVM_ARGS: &[&str] = &[
    "--nested on",
    "--backend kernel",
    "--hv hv-relaxed,hv-vapic,hv-vpindex,hv-runtime,hv-time,hv-frequencies,hv-evmcs,kvm=off",
    "--hv-report",
];

/// The command L1 runs: its own log lines about Hyper-V and KVM, then hvkvm (L1's VMM) runs the
/// `exit_status` payload as L2 and reports its status.
pub const LINUX_L1_COMMAND: &[&str] = &[
    "sh",
    "-c",
    "dmesg | grep -i -E 'hypervisor detected|hyper-v|evmcs|kvm'; \
     hvkvm run --payload \"$HVKVM_GUEST_DIR/exit_status\" --timeout 600; \
     echo \"HVKVM-L2-STATUS: $?\"",
];

/// Checks what the Linux L1 run printed (its console, hvkvm's own output around it included):
/// Linux detected Hyper-V, its kvm_intel switched to the enlightened VMCS, L2 ran to its exit
/// status 42, and the outer hvkvm's report shows L1's VP assist page.
pub fn check_linux_l1_evmcs(status: i32, console: &str) {
    let has = |needle: &str| console.lines().any(|l| l.contains(needle));
    let tail: Vec<&str> = console.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let tail = tail.join("\n");
    assert_eq!(
        status, 0,
        "the command in L1 failed; L1's last lines:\n{tail}"
    );
    assert!(
        has("Hypervisor detected: Microsoft Hyper-V"),
        "L1 did not detect Hyper-V:\n{tail}"
    );
    assert!(
        has("using Hyper-V Enlightened VMCS"),
        "L1's kvm_intel does not use the enlightened VMCS:\n{tail}"
    );
    assert!(
        has("HVKVM-L2-STATUS: 42"),
        "the L2 payload did not end with its status 42:\n{tail}"
    );
    assert!(
        has("VP assist page: VP 0 at"),
        "the outer hvkvm's report has no VP assist page for L1:\n{tail}"
    );
}

/// Checks the live reports (SIGUSR1 to the outer hvkvm while L1's KVM runs an L2) in L1's
/// console: at least one shows VP 0 entering L2 through an eVMCS of revision 1, decoded.
pub fn check_live_evmcs_report(console: &str) {
    let reports: Vec<&str> = console
        .split("hvkvm: Hyper-V report of the running VM")
        .skip(1)
        .collect();
    assert!(!reports.is_empty(), "no live report in L1's console");
    let live = reports.iter().find(|r| {
        r.contains("VP 0: enlighten_vmentry 1,") && r.contains(": revision 1, clean fields")
    });
    assert!(
        live.is_some(),
        "none of the {} live reports shows VP 0 entering L2 through an eVMCS of revision 1; \
         the last:\n{}",
        reports.len(),
        reports.last().copied().unwrap_or_default()
    );
}

/// Nested state: pauses L1 while its L2 runs (at L2's first SYNC 20, which goes straight to the
/// VMM since L1 does not intercept port I/O), saves the vCPU (KVM selftests' order, nested state
/// after the MSRs, VP_ASSIST_PAGE among them), loads it into a fresh VM with a copy of guest
/// RAM, and L2 continues there: its second SYNC 20, L1's handling of every later exit and L1's
/// DONE come from the new VM.
pub fn nested_state_round_trip(mode: Mode) {
    let host = HostProbe::probe().expect("probe the host");
    let p = params(mode, 10, flags::NESTED_STATE);
    let (config, _serial) = GuestTest::new(PAYLOAD)
        .configure(|c| {
            l1::configure(c, &p, &host)
                .unwrap_or_else(|e| panic!("cannot configure {mode}: {}", error_chain(&e)))
        })
        .into_config();
    let image = match &config.boot {
        hvkvm::vm::BootSource::Payload { image, .. } => image.clone(),
        hvkvm::vm::BootSource::Linux(_) => unreachable!("a payload"),
    };
    let mini = state_move::MiniSpec::new(&config);
    let (syncs, reason, saved) = state_move::run_moving_at_sync(&mini, &image, 20, TIMEOUT);
    let outcome = VmOutcome {
        reason,
        elapsed: Duration::ZERO,
        boot: String::new(),
        syncs,
        prints: Vec::new(),
        vcpu_stats: Vec::new(),
        stuck_vcpus: Vec::new(),
        hyperv: None,
        host_work: Default::default(),
    };
    let saved = saved.expect("the VM never reached L2's first SYNC 20");
    eprintln!(
        "{mode}: nested state {} bytes, flags {:#x}; {} MSRs moved ({} refused: {:?})",
        saved.nested_size,
        saved.nested_flags,
        saved.msrs_moved,
        saved.msrs_refused.len(),
        saved.msrs_refused
    );
    assert_eq!(
        outcome.reason,
        StopReason::GuestDone,
        "the restored VM did not finish: {}",
        outcome.reason
    );
    assert!(
        saved.guest_mode,
        "the vCPU was not in L2 when its state was saved"
    );
    assert_eq!(
        saved.evmcs,
        mode == Mode::Evmcs,
        "KVM_STATE_NESTED_EVMCS in the saved nested state (flags {:#x})",
        saved.nested_flags
    );
    let r = L1Report::decode(mode, &outcome).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let i: Vec<u64> = r.l2_syncs.iter().map(|v| v[0]).collect();
    assert_eq!(i, [0, 1], "L2's SYNC 20 reports across the move");
    assert_eq!(
        saved.syncs_before_move, 3,
        "SYNC 1, 2 and L2's first SYNC 20 before the move"
    );
    let l2 = r.l2.expect("SYNC 4 after the move");
    assert_eq!(
        l2,
        [
            u64::from(ANSWER_EAX),
            u64::from(!BENCH_LEAF),
            0,
            1,
            0,
            EXIT_HLT
        ],
        "L2 in the restored VM did not get L1's answers"
    );
    assert_eq!(r.timing.expect("SYNC 3").exits, 10);
}

/// A minimal VMM for [`nested_state_round_trip`]: the pieces of `hvkvm::vm` (memory, payload
/// loader, CPUID table, Hyper-V backend, exit handler) driven one KVM_RUN at a time, so that a
/// vCPU's state can be taken out of one VM and put into another. The snapshot/restore of the
/// whole VM (issue 11) should reuse the order and the nested-state calls shown here
/// (`hvkvm::kvm::nested::{get_nested_state, set_nested_state}`), not this test VMM.
mod state_move {
    use super::*;

    use hvkvm::cpu::cpuid;
    use hvkvm::devices::IoBus;
    use hvkvm::hyperv::backend::BackendParams;
    use hvkvm::hyperv::{HvBackend, HvConfig};
    use hvkvm::kvm::kick::{self, KickGuard};
    use hvkvm::kvm::nested::{get_nested_state, set_nested_state, NestedState};
    use hvkvm::memory::{self, Bytes, GuestAddress, GuestMemory};
    use hvkvm::vcpu::msr::MsrBus;
    use hvkvm::vcpu::run_loop::run_once;
    use hvkvm::vcpu::stats::VcpuStats;
    use hvkvm::vcpu::{ExitAction, ExitHandler, VcpuState};
    use hvkvm::vm::control::VmControl;
    use hvkvm::vm::{SyncEvent, VmConfig};
    use kvm_bindings::{
        kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_regs,
        kvm_sregs, kvm_vcpu_events, kvm_xcrs, KVM_MAX_CPUID_ENTRIES,
    };
    use kvm_ioctls::{Kvm, VcpuFd, VmFd};
    use vmm_sys_util::signal::Killable;

    /// Where KVM puts the real-mode TSS (as `hvkvm::vm` does).
    const TSS_ADDRESS: usize = 0xfffb_d000;

    /// What a VM of this test is built from.
    pub struct MiniSpec {
        pub memory_mib: u64,
        pub table: Vec<kvm_cpuid_entry2>,
        pub hyperv: Option<HvConfig>,
    }

    impl MiniSpec {
        /// The CPUID table `hvkvm::vm` would give vCPU 0 of `config` on a VMX host (same
        /// steps: CPU model, VMX, hypervisor leaves, explicit leaves; no host quirks there).
        pub fn new(config: &VmConfig) -> MiniSpec {
            let kvm = Kvm::new().expect("open /dev/kvm");
            let supported = kvm
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .expect("KVM_GET_SUPPORTED_CPUID");
            let mut table = cpuid::for_vcpu(supported.as_slice(), config.cpu_model, 0, &[]);
            hvkvm::cpu::nested::set_vmx(&mut table, config.nested);
            if let Some(leaves) = &config.hypervisor_leaves {
                cpuid::replace_hypervisor_leaves(&mut table, leaves);
            }
            cpuid::apply_overrides(&mut table, &config.cpuid_overrides);
            MiniSpec {
                memory_mib: config.memory_mib,
                table,
                hyperv: config.hyperv.clone(),
            }
        }
    }

    struct MiniVm {
        // Drop order: vCPU before the VM fd, memory last.
        vcpu: VcpuFd,
        handler: ExitHandler,
        control: Arc<VmControl>,
        _backend: Option<HvBackend>,
        _vm: VmFd,
        mem: GuestMemory,
    }

    fn build(kvm: &Kvm, spec: &MiniSpec) -> MiniVm {
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        vm.set_tss_address(TSS_ADDRESS).expect("KVM_SET_TSS_ADDR");
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
        let mem = memory::allocate(spec.memory_mib).expect("guest RAM");
        memory::register_with_kvm(&vm, &mem).expect("memory slots");
        let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        vcpu.set_cpuid2(&cpuid::to_kvm(&spec.table).expect("CPUID table"))
            .expect("KVM_SET_CPUID2");
        let mut msrs = MsrBus::default();
        let backend = spec.hyperv.as_ref().map(|config| {
            HvBackend::new(BackendParams {
                config,
                cpuid: &spec.table,
                vcpus: 1,
                mem: mem.clone(),
                guest_tsc: 0,
                tsc_khz: vcpu.get_tsc_khz().unwrap_or(1_000_000),
                // The kernel backend in this mini VM: KVM delivers its interrupts.
                link: std::sync::Arc::new(hvkvm::hyperv::user::link::NoLink),
                time_dilation: 1,
            })
        });
        let hv_vp = backend.as_ref().map(|b| {
            b.setup_vcpu(0, &vcpu)
                .unwrap_or_else(|e| panic!("Hyper-V vCPU setup: {}", error_chain(&e)));
            b.attach_vcpu(0, &mut msrs)
        });
        let control = Arc::new(VmControl::default());
        let handler = ExitHandler {
            vcpu: 0,
            io: IoBus::new(),
            msrs,
            mem: mem.clone(),
            control: control.clone(),
            stats: Arc::new(VcpuStats::default()),
            assist: None,
            hyperv: hv_vp,
        };
        MiniVm {
            vcpu,
            handler,
            control,
            _backend: backend,
            _vm: vm,
            mem,
        }
    }

    /// Everything of one vCPU this test moves.
    struct VcpuSnapshot {
        events: kvm_vcpu_events,
        mp_state: kvm_mp_state,
        regs: kvm_regs,
        fpu: kvm_fpu,
        xcrs: Option<kvm_xcrs>,
        sregs: kvm_sregs,
        lapic: kvm_lapic_state,
        nested: Option<NestedState>,
        msrs: Vec<(u32, u64)>,
        debugregs: kvm_debugregs,
    }

    /// What the test learned about the move.
    #[derive(Debug)]
    pub struct Moved {
        pub nested_size: u32,
        pub nested_flags: u16,
        pub guest_mode: bool,
        pub evmcs: bool,
        pub msrs_moved: usize,
        pub msrs_refused: Vec<String>,
        pub syncs_before_move: usize,
    }

    /// Saves in the order KVM's selftests use (vcpu_save_state): events, MP state, regs, FPU
    /// (this test's guests use no XSAVE state), XCRs, sregs, LAPIC, nested state, MSRs (every
    /// index KVM_GET_MSR_INDEX_LIST names that reads back), debug registers.
    fn save(kvm: &Kvm, vcpu: &VcpuFd, xsave_in_cpuid: bool) -> VcpuSnapshot {
        let indices = kvm.get_msr_index_list().expect("KVM_GET_MSR_INDEX_LIST");
        VcpuSnapshot {
            events: vcpu.get_vcpu_events().expect("KVM_GET_VCPU_EVENTS"),
            mp_state: vcpu.get_mp_state().expect("KVM_GET_MP_STATE"),
            regs: vcpu.get_regs().expect("KVM_GET_REGS"),
            fpu: vcpu.get_fpu().expect("KVM_GET_FPU"),
            // KVM_SET_XCRS refuses XCR0 for a guest without XSAVE in CPUID (the emulated
            // Intel host boots with `noxsave`), though KVM_GET_XCRS answers.
            xcrs: if xsave_in_cpuid {
                Some(vcpu.get_xcrs().expect("KVM_GET_XCRS"))
            } else {
                None
            },
            sregs: vcpu.get_sregs().expect("KVM_GET_SREGS"),
            lapic: vcpu.get_lapic().expect("KVM_GET_LAPIC"),
            nested: get_nested_state(vcpu).expect("KVM_GET_NESTED_STATE"),
            msrs: indices
                .as_slice()
                .iter()
                .filter_map(|&i| VcpuState::msr(vcpu, i).ok().map(|v| (i, v)))
                .collect(),
            debugregs: vcpu.get_debug_regs().expect("KVM_GET_DEBUGREGS"),
        }
    }

    /// Loads in the order KVM requires (vcpu_load_state): sregs (and the LAPIC, whose base
    /// they carry), MSRs, XCRs, FPU, events, MP state, debug registers, regs, and the nested
    /// state last: it needs the MSRs (VP_ASSIST_PAGE for an eVMCS) and the L2 registers in
    /// place. Returns the MSRs KVM refused, by index and error.
    fn load(vcpu: &VcpuFd, s: &VcpuSnapshot) -> Vec<String> {
        vcpu.set_sregs(&s.sregs).expect("KVM_SET_SREGS");
        vcpu.set_lapic(&s.lapic).expect("KVM_SET_LAPIC");
        let refused: Vec<String> = s
            .msrs
            .iter()
            .filter_map(|&(i, v)| {
                VcpuState::set_msr(vcpu, i, v)
                    .err()
                    .map(|e| format!("{i:#x}={v:#x}: {e}"))
            })
            .collect();
        if let Some(xcrs) = &s.xcrs {
            vcpu.set_xcrs(xcrs).expect("KVM_SET_XCRS");
        }
        vcpu.set_fpu(&s.fpu).expect("KVM_SET_FPU");
        vcpu.set_vcpu_events(&s.events)
            .expect("KVM_SET_VCPU_EVENTS");
        vcpu.set_mp_state(s.mp_state).expect("KVM_SET_MP_STATE");
        vcpu.set_debug_regs(&s.debugregs)
            .expect("KVM_SET_DEBUGREGS");
        vcpu.set_regs(&s.regs).expect("KVM_SET_REGS");
        if let Some(nested) = &s.nested {
            set_nested_state(vcpu, nested).expect("KVM_SET_NESTED_STATE");
        }
        refused
    }

    /// MSRs whose loss would break this test: EFER, IA32_FEATURE_CONTROL, VP_ASSIST_PAGE.
    const CRITICAL_MSRS: [u32; 3] = [0xC000_0080, 0x3A, 0x4000_0073];

    /// Runs the VM until `stage`'s first SYNC (or its end), moves the vCPU into a fresh VM and
    /// runs that to its end. Returns every SYNC of both VMs, how the last one ended, and what
    /// the move saw (None when the stage never came).
    pub fn run_moving_at_sync(
        spec: &MiniSpec,
        image: &[u8],
        stage: u64,
        timeout: Duration,
    ) -> (Vec<SyncEvent>, StopReason, Option<Moved>) {
        kick::install_handler().expect("kick signal handler");
        let expired = Arc::new(AtomicBool::new(false));
        let body = {
            let expired = expired.clone();
            let spec = MiniSpec {
                memory_mib: spec.memory_mib,
                table: spec.table.clone(),
                hyperv: spec.hyperv.clone(),
            };
            let image = image.to_vec();
            move || run_body(&spec, &image, stage, &expired)
        };
        let handle = std::thread::spawn(body);
        // Watchdog: past the deadline, kick the vCPU thread out of KVM_RUN until it gives up.
        let deadline = Instant::now() + timeout;
        while !handle.is_finished() {
            if Instant::now() >= deadline {
                expired.store(true, Ordering::SeqCst);
                let _ = handle.kill(kick::kick_signal());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        handle
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    fn run_body(
        spec: &MiniSpec,
        image: &[u8],
        stage: u64,
        expired: &AtomicBool,
    ) -> (Vec<SyncEvent>, StopReason, Option<Moved>) {
        let kvm = Kvm::new().expect("open /dev/kvm");
        let mut a = build(&kvm, spec);
        let plan = hvkvm::boot::payload::load(&a.mem, spec.memory_mib << 20, 1, image, PAYLOAD)
            .expect("load the payload");
        let boot = &plan.vcpus[0];
        let mut sregs = boot.sregs;
        let initial = a.vcpu.get_sregs().expect("KVM_GET_SREGS");
        sregs.apic_base = initial.apic_base;
        sregs.interrupt_bitmap = initial.interrupt_bitmap;
        a.vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
        a.vcpu.set_regs(&boot.regs).expect("KVM_SET_REGS");

        let mut syncs = Vec::new();
        let reached = |syncs: &[SyncEvent]| syncs.iter().any(|s| s.stage == stage);
        let end = drive(&mut a, &mut syncs, expired, |s| reached(s));
        if let Some(reason) = end {
            return (syncs, reason, None);
        }
        // Complete the OUT that carried the SYNC (KVM advances RIP on the next KVM_RUN, which
        // immediate_exit makes return at once), so the saved L2 RIP is past it.
        a.vcpu.set_kvm_immediate_exit(1);
        let _ = a.vcpu.run();
        a.vcpu.set_kvm_immediate_exit(0);
        let xsave = spec
            .table
            .iter()
            .any(|e| e.function == 1 && e.ecx & (1 << 26) != 0);
        let snapshot = save(&kvm, &a.vcpu, xsave);
        let mut ram = vec![0u8; (spec.memory_mib << 20) as usize];
        a.mem
            .read_slice(&mut ram, GuestAddress(0))
            .expect("copy guest RAM");
        let syncs_before_move = syncs.len();
        drop(a);

        let mut b = build(&kvm, spec);
        b.mem
            .write_slice(&ram, GuestAddress(0))
            .expect("restore guest RAM");
        let refused = load(&b.vcpu, &snapshot);
        for critical in CRITICAL_MSRS {
            assert!(
                !refused
                    .iter()
                    .any(|r| r.starts_with(&format!("{critical:#x}="))),
                "KVM refused MSR {critical:#x} on restore: {refused:?}"
            );
        }
        let nested = snapshot.nested.as_ref();
        let moved = Moved {
            nested_size: nested.map_or(0, |n| n.size()),
            nested_flags: nested.map_or(0, |n| n.flags()),
            guest_mode: nested.is_some_and(|n| n.guest_mode()),
            evmcs: nested.is_some_and(|n| n.evmcs()),
            msrs_moved: snapshot.msrs.len(),
            msrs_refused: refused,
            syncs_before_move,
        };
        let reason = drive(&mut b, &mut syncs, expired, |_| false)
            .unwrap_or(StopReason::Timeout { after_ms: 0 });
        (syncs, reason, Some(moved))
    }

    /// KVM_RUN until the guest stops (`Some(reason)`) or `pause_when` holds for the SYNCs so
    /// far (`None`).
    fn drive(
        vm: &mut MiniVm,
        syncs: &mut Vec<SyncEvent>,
        expired: &AtomicBool,
        pause_when: impl Fn(&[SyncEvent]) -> bool,
    ) -> Option<StopReason> {
        let _kick = KickGuard::register(&mut vm.vcpu);
        loop {
            if expired.load(Ordering::SeqCst) {
                return Some(StopReason::Timeout { after_ms: 0 });
            }
            let action = run_once(&mut vm.vcpu, &mut vm.handler);
            let (new, _) = vm.control.take_reports();
            syncs.extend(new);
            if let ExitAction::Stop(reason) = action {
                return Some(reason);
            }
            if pause_when(syncs) {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message `f` panics with (a test failure if it does not panic).
    fn panic_text(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        match std::panic::catch_unwind(f) {
            Ok(()) => panic!("expected the check to fail"),
            Err(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        }
    }

    /// Lines of a real run (the emulated Intel host, Debian 6.1 as L1), trimmed.
    const L1_CONSOLE: &str = "\
HVKVM-L1: kvm loaded, running /hvkvm/command
[    0.000000] Hypervisor detected: Microsoft Hyper-V
[    0.000000] Hyper-V: Nested features: 0x101
[    6.033458] KVM: vmx: using Hyper-V Enlightened VMCS
hvkvm: the guest wrote 42 to the test-exit port 0xf4; ran 0.004 s (exit status 42)
HVKVM-L2-STATUS: 42
HVKVM-L1-EXIT: 0
hvkvm: the guest powered off; ran 8.916 s (exit status 0)
Hyper-V usage report (kernel backend)
  VP assist page: VP 0 at 0x3db4000
    VP 0: enlighten_vmentry 0, current_nested_vmcs 0x0, eVMCS versions 1..=1
";

    #[test]
    fn the_linux_l1_check_accepts_a_real_run_and_names_what_is_missing() {
        check_linux_l1_evmcs(0, L1_CONSOLE);
        for (missing, expect) in [
            ("Microsoft Hyper-V", "did not detect Hyper-V"),
            ("Enlightened VMCS", "enlightened VMCS"),
            ("HVKVM-L2-STATUS: 42", "status 42"),
        ] {
            let console = L1_CONSOLE.replace(missing, "something else");
            let err = panic_text(|| check_linux_l1_evmcs(0, &console));
            assert!(err.contains(expect), "{missing}: {err}");
        }
        let err = panic_text(|| check_linux_l1_evmcs(1, L1_CONSOLE));
        assert!(err.contains("the command in L1 failed"), "{err}");
    }

    #[test]
    fn the_live_report_check_wants_an_enlightened_entry() {
        // A live report of that run (SIGUSR1 while L1's KVM ran io_loop as L2), trimmed.
        let live = "\
hvkvm: Hyper-V report of the running VM
Hyper-V usage report (kernel backend)
  VP assist page: VP 0 at 0x3db4000
    VP 0: enlighten_vmentry 1, current_nested_vmcs 0x1fe33000, eVMCS versions 1..=1
      eVMCS at 0x1fe33000: revision 1, clean fields 0xffff (changed: none)
      L2 RIP 0x200017, last exit 0x1e (I/O instruction), qualification 0x10020000, \
VM-instruction error 0
";
        check_live_evmcs_report(&format!("{L1_CONSOLE}{live}"));
        let err = panic_text(|| check_live_evmcs_report(L1_CONSOLE));
        assert!(err.contains("no live report"), "{err}");
        let idle = live.replace("enlighten_vmentry 1", "enlighten_vmentry 0");
        let err = panic_text(|| check_live_evmcs_report(&idle));
        assert!(err.contains("none of the 1 live reports"), "{err}");
    }
}
