//! A Hyper-V MSR exit: the guest reads TIME_REF_COUNT in a loop; hvkvm's user backend answers
//! it (exit dispatch, partition lock, reference clock), against a minimal kvm-ioctls loop that
//! answers the same exit directly. Same guest code, same VM setup, interleaved rounds in one
//! run; prints the median ratio.
//!
//! Guest code (64-bit, at 2 MiB):
//! `mov ecx, 0x40000020; mov esi, N; 1: rdmsr; dec esi; jnz 1b; out 0xf4, al`.

use std::time::{Duration, Instant};

use hvkvm::boot::payload;
use hvkvm::cpu::CpuidEntry;
use hvkvm::hyperv::HvConfig;
use hvkvm::kvm::clock::host_tsc;
use hvkvm::memory;
use hvkvm::vm::{BootSource, StopReason, Vm, VmConfig};
use kvm_bindings::{
    kvm_enable_cap, kvm_mp_state, KVM_CAP_X86_USER_SPACE_MSR, KVM_MP_STATE_RUNNABLE,
    KVM_MSR_EXIT_REASON_UNKNOWN,
};
use kvm_ioctls::{Kvm, VcpuExit};

const LOAD_ADDR: u64 = 0x20_0000;
const READS: u32 = 20_000;
const ROUNDS: usize = 5;

fn code(reads: u32) -> Vec<u8> {
    let mut c = vec![0xb9, 0x20, 0x00, 0x00, 0x40, 0xbe];
    c.extend_from_slice(&reads.to_le_bytes());
    c.extend_from_slice(&[0x0f, 0x32, 0xff, 0xce, 0x75, 0xfa, 0xe6, 0xf4]);
    c
}

fn elf(code: &[u8]) -> Vec<u8> {
    payload::elf_from_code(LOAD_ADDR, code)
}

/// "Microsoft Hv" with only TIME_REF_COUNT (03.EAX[1]) and the hypercall MSRs offered.
fn hyperv_leaves() -> Vec<CpuidEntry> {
    let leaf = |function, eax, ebx, ecx, edx| CpuidEntry {
        function,
        index: 0,
        eax,
        ebx,
        ecx,
        edx,
    };
    vec![
        leaf(
            0x4000_0000,
            0x4000_0005,
            0x7263_694d,
            0x666f_736f,
            0x7648_2074,
        ),
        leaf(0x4000_0001, 0x3123_7648, 0, 0, 0),
        leaf(0x4000_0003, (1 << 1) | (1 << 5), 0, 0, 0),
        leaf(0x4000_0004, 0, 0, 0, 0),
        leaf(0x4000_0005, 0, 0, 0, 0),
    ]
}

fn hvkvm_reads(reads: u32) -> Duration {
    let mut config = VmConfig::new(BootSource::Payload {
        image: elf(&code(reads)),
        name: "bench".into(),
    });
    config.memory_mib = 64;
    config.timeout = Some(Duration::from_secs(600));
    config.serial = Box::new(std::io::sink());
    config.hypervisor_leaves = Some(hyperv_leaves());
    config.hyperv = Some(HvConfig::raw(hv_model::Backend::User));
    let outcome = Vm::new(config).unwrap().run().unwrap();
    // The exit status is AL after the last read (the low byte of the time): any is fine.
    assert!(
        matches!(outcome.reason, StopReason::TestExit { .. }),
        "{}",
        outcome.reason
    );
    let gp = outcome.vcpu_stats[0].msr_gp;
    assert_eq!(gp, 0, "TIME_REF_COUNT must be served, not refused");
    outcome.elapsed
}

fn raw_reads(reads: u32) -> Duration {
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [u64::from(KVM_MSR_EXIT_REASON_UNKNOWN), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap).unwrap();
    let mem = memory::allocate(64).unwrap();
    memory::register_with_kvm(&vm, &mem).unwrap();
    let plan = payload::load(&mem, 64 << 20, 1, &elf(&code(reads)), "bench").unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let mut entries: Vec<_> = cpuid.as_slice().to_vec();
    hvkvm::cpu::cpuid::replace_hypervisor_leaves(&mut entries, &hyperv_leaves());
    cpuid = hvkvm::cpu::cpuid::to_kvm(&entries).unwrap();
    vcpu.set_cpuid2(&cpuid).unwrap();
    let apic_base = vcpu.get_sregs().unwrap().apic_base;
    let mut sregs = plan.vcpus[0].sregs;
    sregs.apic_base = apic_base;
    vcpu.set_sregs(&sregs).unwrap();
    vcpu.set_regs(&plan.vcpus[0].regs).unwrap();
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    })
    .unwrap();
    let start = Instant::now();
    loop {
        match vcpu.run().unwrap() {
            // The least an answer can be: a 100 ns count from the host TSC (2.5 GHz assumed).
            VcpuExit::X86Rdmsr(exit) => *exit.data = host_tsc() / 250,
            VcpuExit::IoOut(0xf4, _) => return start.elapsed(),
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

fn main() {
    if std::fs::metadata("/dev/kvm").is_err() {
        println!("SKIP: /dev/kvm is not available");
        return;
    }
    let host = hvkvm::kvm::HostProbe::probe().unwrap();
    let (mut hv, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        hv.push(hvkvm_reads(READS).as_nanos() as f64 / f64::from(READS));
        raw.push(raw_reads(READS).as_nanos() as f64 / f64::from(READS));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (h, r) = (median(&mut hv), median(&mut raw));
    println!(
        "hyperv_msr_exit (TIME_REF_COUNT rdmsr): hvkvm user backend {h:.0} ns/read, raw kvm-ioctls \
         loop {r:.0} ns/read, ratio {:.3} (median of {ROUNDS} interleaved rounds of {READS} reads; \
         host {} via {})",
        h / r,
        host.cpu_model.as_deref().unwrap_or("unknown CPU"),
        host.kvm_module.as_deref().unwrap_or("kvm"),
    );
}
