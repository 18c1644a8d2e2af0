//! One port-I/O exit round trip: through hvkvm (vCPU thread, run state, exit dispatch, I/O
//! bus) against a minimal loop written directly on kvm-ioctls, with the same guest code in
//! the same VM setup, measured in the same run. Prints the ratio at the end.
//!
//! Guest code (64-bit, at 2 MiB): `mov dx, 0x1002; 1: out dx, al; jmp 1b`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use hvkvm::boot::payload;
use hvkvm::devices::bus::{PioDevice, PioOutcome};
use hvkvm::devices::GuestRequest;
use hvkvm::memory;
use hvkvm::vm::{BootSource, Vm, VmConfig};
use kvm_bindings::{kvm_mp_state, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::{Kvm, VcpuExit};

const BENCH_PORT: u16 = 0x1002;
const CODE: &[u8] = &[0x66, 0xba, 0x02, 0x10, 0xee, 0xeb, 0xfd];
const LOAD_ADDR: u64 = 0x20_0000;
const WARMUP_EXITS: u64 = 1000;

fn payload_elf() -> Vec<u8> {
    payload::elf_from_code(LOAD_ADDR, CODE)
}

/// Times `exits` exits after a warm-up, then ends the VM.
struct Stopwatch {
    count: u64,
    target: u64,
    started: Option<Instant>,
    result: Arc<Mutex<Option<Duration>>>,
}

impl PioDevice for Stopwatch {
    fn read(&mut self, _: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u16, _: &[u8]) -> PioOutcome {
        self.count += 1;
        if self.count == WARMUP_EXITS {
            self.started = Some(Instant::now());
        } else if self.count == WARMUP_EXITS + self.target {
            *self.result.lock().unwrap() = self.started.map(|s| s.elapsed());
            return PioOutcome::Request(GuestRequest::TestExit(0));
        }
        PioOutcome::Done
    }
}

/// `exits` round trips through hvkvm.
fn hvkvm_exits(exits: u64) -> Duration {
    let result = Arc::new(Mutex::new(None));
    let stopwatch = Stopwatch {
        count: 0,
        target: exits.max(1),
        started: None,
        result: result.clone(),
    };
    let mut config = VmConfig::new(BootSource::Payload {
        image: payload_elf(),
        name: "bench".into(),
    });
    config.memory_mib = 64;
    config.timeout = Some(Duration::from_secs(600));
    config.serial = Box::new(std::io::sink());
    config
        .extra_pio
        .push((BENCH_PORT, 1, Arc::new(Mutex::new(stopwatch))));
    Vm::new(config).unwrap().run().unwrap();
    let elapsed = result
        .lock()
        .unwrap()
        .expect("the benchmark VM stopped early");
    elapsed
}

/// `exits` round trips through a bare kvm-ioctls loop on an identically prepared VM.
fn raw_exits(exits: u64) -> Duration {
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    let mem = memory::allocate(64).unwrap();
    memory::register_with_kvm(&vm, &mem).unwrap();
    let plan = payload::load(&mem, 64 << 20, 1, &payload_elf(), "bench").unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    let apic_base = sregs.apic_base;
    sregs = plan.vcpus[0].sregs;
    sregs.apic_base = apic_base;
    vcpu.set_sregs(&sregs).unwrap();
    vcpu.set_regs(&plan.vcpus[0].regs).unwrap();
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    })
    .unwrap();
    let counter = AtomicU64::new(0);
    let mut start = None;
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::IoOut(BENCH_PORT, _) => {
                let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                if n == WARMUP_EXITS {
                    start = Some(Instant::now());
                } else if n == WARMUP_EXITS + exits.max(1) {
                    return start.unwrap().elapsed();
                }
            }
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

fn bench(c: &mut Criterion) {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("SKIP: /dev/kvm is not available");
        return;
    }
    let mut group = c.benchmark_group("io_exit_round_trip");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("hvkvm", |b| b.iter_custom(hvkvm_exits));
    group.bench_function("raw_kvm_ioctls", |b| b.iter_custom(raw_exits));
    group.finish();
}

/// Interleaved side-by-side runs, so both see the same host conditions; prints the ratio.
fn ratio_summary() {
    if std::fs::metadata("/dev/kvm").is_err() {
        return;
    }
    const EXITS: u64 = 20_000;
    const ROUNDS: usize = 5;
    let mut hv = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..ROUNDS {
        hv.push(hvkvm_exits(EXITS).as_nanos() as f64 / EXITS as f64);
        raw.push(raw_exits(EXITS).as_nanos() as f64 / EXITS as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (h, r) = (median(&mut hv), median(&mut raw));
    println!(
        "io_exit_round_trip: hvkvm {h:.0} ns/exit, raw kvm-ioctls {r:.0} ns/exit, ratio {:.3} \
         (median of {ROUNDS} interleaved rounds of {EXITS} exits)",
        h / r
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratio_summary();
}
