//! The VMM foundation: boot contract, serial, test-exit, SMP start, CPUID, MSR exits, faults,
//! timeouts, pause/resume. Each case boots a fresh VM.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hvkvm::cpu::CpuidEntry;
use hvkvm::devices::bus::{PioDevice, PioOutcome};
use hvkvm::vcpu::msr::{MsrFault, MsrHandler};
use hvkvm::vm::{StopReason, Vm};

use super::{suite_cases, Case};
use crate::{elf_from_code, GuestTest};

const MIB: u64 = 1 << 20;

/// The foundation cases.
pub fn cases() -> Vec<Case> {
    suite_cases!("foundation";
        boot_contract_holds_on_every_vcpu,
        serial_output_reaches_the_host,
        test_exit_port_ends_the_vm_with_the_guests_status,
        every_vcpu_starts_at_the_entry,
        cpuid_leaves_set_by_the_host_are_visible_to_the_guest,
        msr_exit_round_trips_through_the_vmm,
        a_guest_fault_is_reported_not_hung,
        a_failed_guest_assertion_names_file_and_line,
        timeout_stops_a_halted_or_spinning_guest,
        emulation_failure_is_reported_with_instruction_bytes,
        pause_stops_guest_progress_and_resume_restarts_it,
    )
}

fn boot_contract_holds_on_every_vcpu() {
    for cpus in [1u32, 3] {
        let run = GuestTest::new("boot_contract").cpus(cpus).run();
        run.expect_done();
        let s = run.sync(1);
        let [count, ram_top, cr0, cr4, efer, cr3] = s.values;
        assert_eq!(count, u64::from(cpus));
        assert_eq!(ram_top, 64 * MIB);
        assert_eq!(cr0 & (1 << 31 | 1), 1 << 31 | 1, "paging and protection on");
        assert_ne!(cr4 & (1 << 5), 0, "PAE on");
        assert_eq!(
            efer & (1 << 8 | 1 << 10),
            1 << 8 | 1 << 10,
            "long mode active"
        );
        assert_eq!(cr3, 0x9000, "hvkvm's identity page tables");
    }
}

fn serial_output_reaches_the_host() {
    let run = GuestTest::new("serial_hello").run();
    run.expect_done();
    assert!(
        run.serial.contains("hvkvm guest: hello from COM1\n"),
        "serial: {:?}",
        run.serial
    );
}

fn test_exit_port_ends_the_vm_with_the_guests_status() {
    let run = GuestTest::new("exit_status").run();
    assert_eq!(run.reason(), &StopReason::TestExit { status: 42 });
    assert_eq!(run.reason().exit_status(), 42);
}

fn every_vcpu_starts_at_the_entry() {
    let run = GuestTest::new("multi_vcpu").cpus(4).run();
    run.expect_done();
    let [mask, count, ..] = run.sync(1).values;
    assert_eq!((mask, count), (0b1111, 4));
    for cpu in 0..4 {
        assert!(
            run.serial.contains(&format!("cpu {cpu} up")),
            "serial: {:?}",
            run.serial
        );
    }
}

fn cpuid_leaves_set_by_the_host_are_visible_to_the_guest() {
    let leaf = CpuidEntry {
        function: 0x4000_00f0,
        index: 0,
        eax: 0x1111,
        ebx: 0x2222,
        ecx: 0x3333,
        edx: 0x4444,
    };
    let run = GuestTest::new("cpuid_leaf").cpuid(leaf).run();
    run.expect_done();
    let [_, ebx, ecx, edx, ..] = run.sync(1).values;
    let vendor: Vec<u8> = [ebx, ecx, edx]
        .iter()
        .flat_map(|r| (*r as u32).to_le_bytes())
        .collect();
    assert_eq!(
        &vendor[..9],
        b"KVMKVMKVM",
        "KVM's own leaf stays at 0x40000000 without Hyper-V"
    );
    assert_eq!(run.sync(2).values[..4], [0x1111, 0x2222, 0x3333, 0x4444]);
}

/// A scratch MSR owned by the test, counting accesses.
#[derive(Clone, Default)]
struct ScratchMsr(Arc<Mutex<(u64, u32, u32)>>);

impl MsrHandler for ScratchMsr {
    fn read(&mut self, _: u32, _: u32) -> Result<u64, MsrFault> {
        let mut s = self.0.lock().unwrap();
        s.2 += 1;
        Ok(s.0)
    }
    fn write(&mut self, _: u32, _: u32, value: u64) -> Result<(), MsrFault> {
        let mut s = self.0.lock().unwrap();
        s.0 = value;
        s.1 += 1;
        Ok(())
    }
}

fn msr_exit_round_trips_through_the_vmm() {
    const TEST_MSR: u32 = 0x4856_4b4d;
    let msr = ScratchMsr::default();
    let run = GuestTest::new("msr_roundtrip")
        .msr_handler(TEST_MSR..=TEST_MSR, msr.clone())
        .run();
    run.expect_done();
    assert_eq!(run.sync(1).values[0], 0x1122_3344_5566_7788);
    let (value, writes, reads) = *msr.0.lock().unwrap();
    assert_eq!((value, writes, reads), (0x1122_3344_5566_7788, 1, 1));
    assert_eq!(run.outcome.vcpu_stats[0].msr, 2);
}

fn a_guest_fault_is_reported_not_hung() {
    let run = GuestTest::new("triple_fault")
        .timeout(Duration::from_secs(10))
        .run();
    assert!(
        matches!(run.reason(), StopReason::TripleFault { vcpu: 0, .. }),
        "expected a triple fault, got: {}",
        run.reason()
    );
}

fn a_failed_guest_assertion_names_file_and_line() {
    let run = GuestTest::new("assert_fail").run();
    let StopReason::GuestAssert(a) = run.reason() else {
        panic!("expected a guest assertion, got {}", run.reason());
    };
    let source = include_str!("../../guest/src/bin/assert_fail.rs");
    let line = source
        .lines()
        .position(|l| l.contains("guest_assert_eq!(1 + 1"))
        .unwrap() as u64
        + 1;
    assert!(a.file.ends_with("assert_fail.rs"), "file: {}", a.file);
    assert_eq!(a.line, line);
    assert_eq!(a.message, "arithmetic is broken");
    assert_eq!((a.a, a.b), (2, 3));
    assert!(run
        .reason()
        .to_string()
        .contains(&format!("assert_fail.rs:{line}")));
}

/// `cli; hlt; jmp .-1`: a guest that halts forever with interrupts off.
const HALT_FOREVER: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd];

fn timeout_stops_a_halted_or_spinning_guest() {
    for (name, image) in [
        ("halt_forever", elf_from_code(0x20_0000, HALT_FOREVER)),
        (
            "io_loop",
            std::fs::read(crate::guest_binary("io_loop")).unwrap(),
        ),
    ] {
        let start = Instant::now();
        let run = GuestTest::from_image(name, image)
            .cpus(2)
            .timeout(Duration::from_millis(300))
            .run();
        assert_eq!(
            run.reason(),
            &StopReason::Timeout { after_ms: 300 },
            "{name}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{name} took {:?}",
            start.elapsed()
        );
    }
}

/// `pxor xmm0, xmm0; mov al, 7; out 0xf4, al`.
const SSE_THEN_EXIT: &[u8] = &[0x66, 0x0f, 0xef, 0xc0, 0xb0, 0x07, 0xe6, 0xf4];

fn emulation_failure_is_reported_with_instruction_bytes() {
    let host = hvkvm::kvm::HostProbe::probe().unwrap();
    let run = GuestTest::from_image("sse", elf_from_code(0x20_0000, SSE_THEN_EXIT)).run();
    if host.is_pvm() {
        // CPL0 code is emulated here and the emulator has no SSE arithmetic.
        let StopReason::EmulationFailure {
            vcpu: 0,
            rip: 0x20_0000,
            insn,
        } = run.reason()
        else {
            panic!("expected an emulation failure, got {}", run.reason());
        };
        assert_eq!(&insn[..4], &SSE_THEN_EXIT[..4]);
    } else {
        // Hardware executes it, architecturally: the boot contract leaves CR4.OSFXSR clear, so
        // SSE raises #UD, and without an IDT that is a triple fault at the pxor. (Seen on the
        // emulated Intel host; "hardware runs it to the exit" was this case's untested guess.)
        assert_eq!(
            run.reason(),
            &StopReason::TripleFault {
                vcpu: 0,
                rip: 0x20_0000
            }
        );
    }
}

/// Counts `out`s to its port (the io_loop payload writes port 0x1002 in a loop).
struct Counter(Arc<AtomicU64>);

impl PioDevice for Counter {
    fn read(&mut self, _: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u16, _: &[u8]) -> PioOutcome {
        self.0.fetch_add(1, Ordering::Relaxed);
        PioOutcome::Done
    }
}

fn pause_stops_guest_progress_and_resume_restarts_it() {
    let count = Arc::new(AtomicU64::new(0));
    let (config, _) = GuestTest::new("io_loop")
        .pio_device(0x1002, 1, Arc::new(Mutex::new(Counter(count.clone()))))
        .timeout(Duration::from_secs(20))
        .into_config();
    let vm = Vm::new(config).unwrap();
    let control = vm.control();
    let runner = std::thread::spawn(move || vm.run().unwrap());
    let wait_for = |target: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while count.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "guest made no progress");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for(100);
    control.pause();
    assert!(
        control.wait_paused(Duration::from_secs(5)),
        "vCPUs did not park"
    );
    let paused_at = count.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        count.load(Ordering::Relaxed),
        paused_at,
        "guest ran while paused"
    );
    control.resume();
    wait_for(paused_at + 100);
    control.stop(StopReason::PowerOff);
    let outcome = runner.join().unwrap();
    assert_eq!(outcome.reason, StopReason::PowerOff);
    assert!(outcome.stuck_vcpus.is_empty());
}
