//! A small L1 hypervisor: VMXON, then one L2 run through a classic VMCS (VMCLEAR, VMPTRLD,
//! VMWRITE, VMLAUNCH, VMREAD, VMRESUME) or through a Hyper-V enlightened VMCS (VP assist page
//! with `current_nested_vmcs` and `enlighten_vmentry`, the eVMCS written with `evmcs-layout`,
//! clean fields maintained, no VMPTRLD, no VMREAD/VMWRITE at all).
//!
//! L2 is 64-bit code of this image on L1's own page tables (no EPT), with L1's GDT, IDT and TSS.
//! It runs a CPUID loop and times each round trip with RDTSC; L1 handles every CPUID exit
//! (answers with values of its own choosing, advances RIP) and resumes; L2 ends with HLT (HLT
//! exiting). L1 counts the VMREAD/VMWRITE instructions it executes per exit. L2's port I/O is not
//! intercepted, so its ucalls go straight to the VMM (L0).
//!
//! Needs VMX in the guest (`--nested on`); the eVMCS mode also needs the kernel backend with
//! hv-vapic and hv-evmcs (the VP assist page and KVM's eVMCS).
//!
//! Parameters: 0x400000F0 EAX = mode (0 classic VMCS, 1 eVMCS), EBX = CPUID round trips
//! (0 → 200, at most 4096), ECX = flags (bit 0: clean-field row, bit 1: wrong-revision row,
//! bit 2: L2 stops for the nested-state test), EDX = the wrong revision (0 → 0xBAD0_0001);
//! 0x400000F1 = zeros.
//!
//! Reports (all from L1, except stage 20):
//! - SYNC 1 = (mode, VMCS revision id from IA32_VMX_BASIC, TRUE controls used 0/1,
//!   IA32_FEATURE_CONTROL after, CR4 after VMXON, setup VMREADs << 32 | setup VMWRITEs)
//! - SYNC 2 = (pin, primary processor, exit, entry controls as written, CR4 guest/host mask,
//!   CR4 read shadow)
//! - wrong-revision row: SYNC 6 = (revision used, VMLAUNCH result 0 ok / 1 VMfailInvalid /
//!   2 VMfailValid, VM-instruction error or u64::MAX, result of the retry with the right
//!   revision (classic: VMPTRLD; eVMCS: VMLAUNCH), 0, 0); the payload then ends with DONE
//! - SYNC 20 (from L2, straight to the VMM, nested-state flag only) = (i, 0x4C32) for i = 0, 1
//! - SYNC 3 = (CPUID exits timed, median, p10, p90 cycles per L2 round trip, VMREADs, VMWRITEs
//!   L1 executed handling those exits)
//! - SYNC 4 = (EAX, EBX, ECX, EDX L2 saw on its first timed CPUID, answers that differed from
//!   L1's rule, L1's exit reason of L2's end (12 = HLT))
//! - clean-field row: SYNC 5 = (CR4 & mask as L2 read it before, after L1 changed the read
//!   shadow leaving the CRDR clean bit set, after L1 cleared it; mask; old shadow; new shadow)
//! - DONE
#![no_std]
#![no_main]

use core::cell::UnsafeCell;

use evmcs_layout::{vmcs, CleanFields, EVMCS_VERSION};
use hvkvm_guest::hyperv::param;
use hvkvm_guest::vmx::{self, ClassicVmcs, EnlightenedVmcs, GuestRegs, HwPage, Setup, Vmcs};
use hvkvm_guest::x86::{cpuid, halt_forever, rdtsc, read_cr4};
use hvkvm_guest::{guest_assert, guest_done, guest_sync, idt, BootInfo};

hvkvm_guest::entry!(main);

/// L2's timed CPUID leaf; L1 answers it with [`ANSWER_EAX`], !leaf, the subleaf, its count.
const BENCH_LEAF: u32 = 0x4C32_0000;
/// L2 → L1: "do the next step of the clean-field row".
const YIELD_LEAF: u32 = 0x4C32_0001;
/// What L1 puts in EAX for [`BENCH_LEAF`] ("L1L1").
const ANSWER_EAX: u32 = 0x4C31_4C31;

const FLAG_CLEAN_ROW: u32 = 1 << 0;
const FLAG_REVISION_ROW: u32 = 1 << 1;
const FLAG_NESTED_STATE: u32 = 1 << 2;

const DEFAULT_ROUNDS: u32 = 200;
const MAX_ROUNDS: usize = 4096;
const DEFAULT_BAD_REVISION: u32 = 0xBAD0_0001;
/// CR4 bits L1 owns in the clean-field row: VMXE (13) and PCE (8).
const CR4_MASK: u64 = (1 << 13) | (1 << 8);
const CR4_SHADOW_NEW: u64 = CR4_MASK;

static VMXON_REGION: HwPage = HwPage::zeroed();
static VMCS_PAGE: HwPage = HwPage::zeroed();
static ASSIST_PAGE: HwPage = HwPage::zeroed();

/// Memory shared by L1 and L2 (same page tables), accessed with volatile operations.
#[repr(C, align(64))]
struct Shared<T>(UnsafeCell<T>);
// SAFETY: one vCPU; L1 and L2 never run at the same time.
unsafe impl<T> Sync for Shared<T> {}
impl<T: Copy> Shared<T> {
    fn get(&self) -> T {
        // SAFETY: our own static.
        unsafe { self.0.get().read_volatile() }
    }
    fn set(&self, v: T) {
        // SAFETY: our own static.
        unsafe { self.0.get().write_volatile(v) }
    }
}

#[derive(Clone, Copy)]
struct L2Config {
    rounds: u32,
    flags: u32,
}

#[derive(Clone, Copy)]
struct L2Result {
    first: [u32; 4],
    mismatches: u64,
    cr4: [u64; 3],
}

static L2_CONFIG: Shared<L2Config> = Shared(UnsafeCell::new(L2Config {
    rounds: 0,
    flags: 0,
}));
static L2_RESULT: Shared<L2Result> = Shared(UnsafeCell::new(L2Result {
    first: [0; 4],
    mismatches: 0,
    cr4: [0; 3],
}));
static SAMPLES: Shared<[u64; MAX_ROUNDS]> = Shared(UnsafeCell::new([0; MAX_ROUNDS]));

const L2_STACK_SIZE: usize = 16 * 1024;
#[repr(C, align(16))]
struct Stack(UnsafeCell<[u8; L2_STACK_SIZE]>);
// SAFETY: used only as L2's stack.
unsafe impl Sync for Stack {}
static L2_STACK: Stack = Stack(UnsafeCell::new([0; L2_STACK_SIZE]));

fn sample_ptr(i: usize) -> *mut u64 {
    SAMPLES.0.get().cast::<u64>().wrapping_add(i)
}

/// L2: the CPUID loop (and the rows' steps), then HLT.
extern "sysv64" fn l2_main() -> ! {
    let cfg = L2_CONFIG.get();
    let mut result = L2Result {
        first: [0; 4],
        mismatches: 0,
        cr4: [0; 3],
    };
    if cfg.flags & FLAG_CLEAN_ROW != 0 {
        result.cr4[0] = read_cr4() & CR4_MASK;
        cpuid(YIELD_LEAF, 0);
        result.cr4[1] = read_cr4() & CR4_MASK;
        cpuid(YIELD_LEAF, 1);
        result.cr4[2] = read_cr4() & CR4_MASK;
    }
    if cfg.flags & FLAG_NESTED_STATE != 0 {
        // The VMM pauses at the first of these and moves the VM; the second comes from the
        // restored VM.
        for i in 0..2u64 {
            guest_sync!(20, i, 0x4C32);
        }
    }
    let rounds = (cfg.rounds as usize).min(MAX_ROUNDS);
    let mut expected_count = 0u32;
    for i in 0..rounds {
        let t0 = rdtsc();
        let r = cpuid(BENCH_LEAF, i as u32);
        let t1 = rdtsc();
        // SAFETY: i < MAX_ROUNDS.
        unsafe { sample_ptr(i).write_volatile(t1.wrapping_sub(t0)) };
        if i == 0 {
            result.first = [r.eax, r.ebx, r.ecx, r.edx];
            expected_count = r.edx;
        }
        let want = [
            ANSWER_EAX,
            !BENCH_LEAF,
            i as u32,
            expected_count.wrapping_add(i as u32),
        ];
        if [r.eax, r.ebx, r.ecx, r.edx] != want {
            result.mismatches += 1;
        }
    }
    L2_RESULT.set(result);
    loop {
        // HLT exiting: this exits to L1, which does not resume L2 afterwards.
        halt_forever();
    }
}

/// Sorts `v` in place (heapsort: no recursion, no allocation).
fn sort(v: &mut [u64]) {
    fn sift(v: &mut [u64], mut root: usize, end: usize) {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                return;
            }
            if child + 1 < end && v[child] < v[child + 1] {
                child += 1;
            }
            if v[root] >= v[child] {
                return;
            }
            v.swap(root, child);
            root = child;
        }
    }
    let n = v.len();
    for start in (0..n / 2).rev() {
        sift(v, start, n);
    }
    for end in (1..n).rev() {
        v.swap(0, end);
        sift(v, 0, end);
    }
}

/// The `pct` percentile of sorted `v` (nearest rank).
fn percentile(v: &[u64], pct: usize) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = (pct * v.len()).div_ceil(100).max(1);
    v[rank - 1]
}

fn main(_boot: BootInfo) -> ! {
    idt::install();
    let p = param(0);
    let _ = param(1);
    let mode = p.eax;
    let rounds = match p.ebx {
        0 => DEFAULT_ROUNDS,
        n => n.min(MAX_ROUNDS as u32),
    };
    let flags = p.ecx;
    let bad_revision = match p.edx {
        0 => DEFAULT_BAD_REVISION,
        r => r,
    };
    guest_assert!(mode <= 1, "mode must be 0 (classic VMCS) or 1 (eVMCS)");

    let tables = vmx::load_gdt_and_tss();
    let caps = vmx::VmxCaps::read();
    let feature = match vmx::enable(&VMXON_REGION, &caps) {
        Ok(f) => f,
        Err(vmx::VmxonError::NoVmx) => {
            hvkvm_guest::ucall::assert_fail(file!(), line!(), "CPUID.1:ECX.VMX is clear", 0, 0)
        }
        Err(vmx::VmxonError::FeatureControlLocked(v)) => hvkvm_guest::ucall::assert_fail(
            file!(),
            line!(),
            "IA32_FEATURE_CONTROL locked without VMXON outside SMX",
            v,
            0,
        ),
        Err(vmx::VmxonError::Vmxon(e)) => {
            hvkvm_guest::ucall::assert_fail(file!(), line!(), "VMXON failed", e.code(), 0)
        }
    };
    let controls = match vmx::controls(&caps) {
        Ok(c) => c,
        Err((which, missing)) => hvkvm_guest::ucall::assert_fail(
            file!(),
            line!(),
            "a VMX control this L1 needs is not allowed (a = control index, b = bits)",
            which,
            u64::from(missing),
        ),
    };
    L2_CONFIG.set(L2Config { rounds, flags });
    let stack_top = L2_STACK.0.get() as u64 + L2_STACK_SIZE as u64;
    let setup = Setup {
        controls,
        tables,
        guest_rip: l2_main as *const () as u64,
        // As if called: RSP + 8 16-byte aligned.
        guest_rsp: stack_top - 8,
        cr4_mask: CR4_MASK,
        cr4_shadow: 0,
    };

    if mode == 0 {
        if flags & FLAG_REVISION_ROW != 0 {
            // VMPTRLD of a VMCS with a wrong revision: VMfailInvalid (no current VMCS yet).
            let first = ClassicVmcs::load(&VMCS_PAGE, bad_revision).err();
            let retry = ClassicVmcs::load(&VMCS_PAGE, caps.revision()).err();
            report_revision_row(bad_revision, first.map_or(0, |e| e.code()), u64::MAX, retry);
        }
        let mut v = ClassicVmcs::load(&VMCS_PAGE, caps.revision()).unwrap_or_else(|e| {
            hvkvm_guest::ucall::assert_fail(file!(), line!(), "VMCLEAR/VMPTRLD failed", e.code(), 0)
        });
        run(&mut v, &caps, feature, &setup, flags)
    } else {
        let revision = if flags & FLAG_REVISION_ROW != 0 {
            bad_revision
        } else {
            u32::from(EVMCS_VERSION)
        };
        let mut v = EnlightenedVmcs::announce(&VMCS_PAGE, &ASSIST_PAGE, revision);
        if flags & FLAG_REVISION_ROW != 0 {
            vmx::setup(&mut v, &setup);
            // L2 only halts in this row.
            L2_CONFIG.set(L2Config {
                rounds: 0,
                flags: 0,
            });
            let mut regs = GuestRegs::default();
            let first = vmx::enter(&mut v, &mut regs, false).err();
            v.set_revision(u32::from(EVMCS_VERSION));
            v.mark_dirty(CleanFields::ALL);
            let retry = vmx::enter(&mut v, &mut regs, false).err();
            let retry_exit = v.read(vmcs::VM_EXIT_REASON);
            guest_assert!(
                retry.is_some() || retry_exit == u64::from(vmx::EXIT_HLT),
                "after fixing the revision L2 must run to its HLT"
            );
            report_revision_row(bad_revision, first.map_or(0, |e| e.code()), u64::MAX, retry);
        }
        run(&mut v, &caps, feature, &setup, flags)
    }
}

fn report_revision_row(revision: u32, first: u64, error: u64, retry: Option<vmx::VmFail>) -> ! {
    guest_sync!(
        6,
        revision,
        first,
        error,
        retry.map_or(0, |e| e.code()),
        0,
        0
    );
    guest_done!()
}

/// Sets up the VMCS, runs L2 to its HLT, reports.
fn run<V: Vmcs>(v: &mut V, caps: &vmx::VmxCaps, feature: u64, setup: &Setup, flags: u32) -> ! {
    vmx::setup(v, setup);
    let (setup_reads, setup_writes) = vmx::instruction_counts();
    guest_sync!(
        1,
        u32::from(V::ENLIGHTENED),
        caps.revision(),
        caps.true_controls(),
        feature,
        read_cr4(),
        (setup_reads << 32) | setup_writes
    );
    let [pin, proc, exit, entry] = setup.controls;
    guest_sync!(2, pin, proc, exit, entry, setup.cr4_mask, setup.cr4_shadow);

    let mut regs = GuestRegs::default();
    let mut resume = false;
    let mut bench_exits = 0u64;
    let (mut bench_reads, mut bench_writes) = (0u64, 0u64);
    // VMREAD/VMWRITE of a timed exit: from the start of its handling to the start of the next
    // exit's (the handling and the re-entry).
    let mut counting_since: Option<(u64, u64)> = None;
    let mut yields = 0u32;
    let end_reason = loop {
        if let Err(e) = vmx::enter(v, &mut regs, resume) {
            let error = if e == vmx::VmFail::Valid && !V::ENLIGHTENED {
                vmx::vmread(vmcs::VM_INSTRUCTION_ERROR).unwrap_or(u64::MAX)
            } else {
                u64::MAX
            };
            hvkvm_guest::ucall::assert_fail(
                file!(),
                line!(),
                "VM entry failed (a = 1 invalid / 2 valid, b = VM-instruction error)",
                e.code(),
                error,
            );
        }
        resume = true;
        let (reads0, writes0) = vmx::instruction_counts();
        if let Some((r, w)) = counting_since.take() {
            bench_reads += reads0 - r;
            bench_writes += writes0 - w;
        }
        v.exited();
        let reason = v.read(vmcs::VM_EXIT_REASON) as u32;
        if reason & vmx::EXIT_ENTRY_FAILURE != 0 {
            let qualification = v.read(vmcs::EXIT_QUALIFICATION);
            hvkvm_guest::ucall::assert_fail(
                file!(),
                line!(),
                "VM entry failed on guest state (a = exit reason, b = qualification)",
                u64::from(reason),
                qualification,
            );
        }
        match reason & 0xffff {
            vmx::EXIT_CPUID => {
                let leaf = regs.rax as u32;
                let subleaf = regs.rcx as u32;
                if leaf == YIELD_LEAF {
                    yields += 1;
                    if yields == 1 {
                        // Change the CR4 read shadow without telling L0 (clean bit kept).
                        v.write_keeping_clean(vmcs::CR4_READ_SHADOW, CR4_SHADOW_NEW);
                    } else {
                        // Now tell L0 that the CRDR group changed.
                        v.mark_dirty(CleanFields::CRDR);
                    }
                    regs.rax = 0;
                    regs.rbx = 0;
                    regs.rcx = 0;
                    regs.rdx = 0;
                } else {
                    bench_exits += u64::from(leaf == BENCH_LEAF);
                    regs.rax = u64::from(ANSWER_EAX);
                    regs.rbx = u64::from(!leaf);
                    regs.rcx = u64::from(subleaf);
                    regs.rdx = bench_exits;
                }
                let rip = v.read(vmcs::GUEST_RIP);
                let len = v.read(vmcs::VM_EXIT_INSTRUCTION_LEN);
                v.write(vmcs::GUEST_RIP, rip + len);
                if leaf == BENCH_LEAF {
                    counting_since = Some((reads0, writes0));
                }
            }
            vmx::EXIT_HLT => break reason,
            other => {
                let qualification = v.read(vmcs::EXIT_QUALIFICATION);
                let rip = v.read(vmcs::GUEST_RIP);
                hvkvm_guest::ucall::assert_fail(
                    file!(),
                    line!(),
                    "unexpected VM exit from L2 (a = reason | qualification << 32, b = L2 RIP)",
                    u64::from(other) | (qualification << 32),
                    rip,
                );
            }
        }
    };

    let cfg = L2_CONFIG.get();
    let n = (cfg.rounds as usize).min(MAX_ROUNDS);
    // SAFETY: L2 has stopped; the samples are ours now, and n <= MAX_ROUNDS.
    let samples = unsafe { core::slice::from_raw_parts_mut(SAMPLES.0.get().cast::<u64>(), n) };
    sort(samples);
    guest_sync!(
        3,
        bench_exits,
        percentile(samples, 50),
        percentile(samples, 10),
        percentile(samples, 90),
        bench_reads,
        bench_writes
    );
    let r = L2_RESULT.get();
    guest_sync!(
        4,
        r.first[0],
        r.first[1],
        r.first[2],
        r.first[3],
        r.mismatches,
        end_reason
    );
    if flags & FLAG_CLEAN_ROW != 0 {
        guest_sync!(
            5,
            r.cr4[0],
            r.cr4[1],
            r.cr4[2],
            CR4_MASK,
            setup.cr4_shadow,
            CR4_SHADOW_NEW
        );
    }
    guest_done!()
}
