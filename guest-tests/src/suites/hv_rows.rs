//! The conformance matrix's building blocks (reference §4), shared by the Hyper-V suites: a
//! row's CPUID bits, the enforce-CPUID leaves built from them, and runs on several vCPUs.

use hvkvm::cpu::CpuidEntry;
use hvkvm::hyperv::CrashAction;

use crate::{GuestTest, TestRun};

/// Bits of the rows, named as in the reference.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bits {
    pub eax3: u32,
    pub ebx3: u32,
    pub edx3: u32,
    pub eax4: u32,
    pub ebx4: u32,
    pub eax82: u32,
}

/// "Microsoft Hv", "Hv#1", and leaves 0x40000003/4 (and 0x40000080-82 with `eax82`) with
/// exactly `b`.
pub fn leaves(b: Bits) -> Vec<CpuidEntry> {
    let leaf = |function, eax, ebx, ecx, edx| CpuidEntry {
        function,
        index: 0,
        eax,
        ebx,
        ecx,
        edx,
    };
    // "Microsoft Hv", "Hv#1", as the guest sees on Hyper-V.
    let max = if b.eax82 != 0 {
        0x4000_0082
    } else {
        0x4000_0005
    };
    let mut l = vec![
        leaf(0x4000_0000, max, 0x7263_694d, 0x666f_736f, 0x7648_2074),
        leaf(0x4000_0001, 0x3123_7648, 0, 0, 0),
        leaf(0x4000_0003, b.eax3, b.ebx3, 0, b.edx3),
        leaf(0x4000_0004, b.eax4, b.ebx4, 0, 0),
        leaf(0x4000_0005, 0, 0, 0, 0),
    ];
    if b.eax82 != 0 {
        l.push(leaf(0x4000_0080, 0, 0x7263_694d, 0x666f_736f, 0x5356_2074));
        l.push(leaf(0x4000_0081, 0x3123_5356, 0, 0, 0));
        l.push(leaf(0x4000_0082, b.eax82, 0, 0, 0));
    }
    l
}

/// `03.EAX[5]` (hypercall MSRs) plus `f`'s changes.
pub fn with(f: impl FnOnce(&mut Bits)) -> Bits {
    let mut b = Bits {
        eax3: 1 << 5,
        ..Bits::default()
    };
    f(&mut b);
    b
}

/// Payload `name` on `cpus` vCPUs with the `--hv` selection `list` on the user backend.
pub fn run_with(name: &str, cpus: u32, list: &str) -> TestRun {
    GuestTest::new(name)
        .cpus(cpus)
        .hyperv(list, CrashAction::Log)
        .run()
}

/// The SYNC of `stage` from vCPU `vcpu`.
pub fn sync_of(run: &TestRun, vcpu: u32, stage: u64) -> [u64; 6] {
    let all = run.syncs(stage);
    let mine: Vec<_> = all.iter().filter(|s| s.vcpu == vcpu).collect();
    assert_eq!(
        mine.len(),
        1,
        "one SYNC {stage} from vCPU {vcpu} expected: {:?}",
        run.outcome.syncs
    );
    mine[0].values
}

/// Most vCPUs a test VM gets: never more than the host's cores (an overcommitted SMP guest
/// livelocked on the emulating test hosts), at most `want`.
pub fn vcpus(want: u32) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    want.min(cores).max(1)
}

/// A matrix row on one MSR: (name, bits, MSR, written value or None for a read, (faulted,
/// vector) expected).
pub type MsrRow = (&'static str, Bits, u32, Option<u64>, (u64, u64));

/// A matrix row on one hypercall: (name, bits, control word, hv_hypercall flags, status or
/// exception vector expected).
pub type HypercallRow = (&'static str, Bits, u64, u32, Result<u64, u64>);

/// `hv_msr_access` in a fresh VM with the leaves of `bits`: one RDMSR of `index` (`write` None)
/// or one WRMSR of the value.
pub fn msr_access(bits: Bits, index: u32, write: Option<u64>) -> TestRun {
    let (op, value) = write.map_or((0, 0), |v| (1, v));
    GuestTest::new("hv_msr_access")
        .hyperv_leaves(leaves(bits))
        .params(&[
            [op, index, 0, 0],
            [value as u32, (value >> 32) as u32, 0, 0],
        ])
        .run()
}

/// [`msr_access`] for an access that must not end the VM: (faulted 0/1, vector).
pub fn msr_fault(bits: Bits, index: u32, write: Option<u64>) -> (u64, u64) {
    let run = msr_access(bits, index, write);
    run.expect_done();
    let [faulted, vector, ..] = run.sync(1).values;
    (faulted, vector)
}
