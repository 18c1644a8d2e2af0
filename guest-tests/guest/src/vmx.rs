//! VMX for L1 hypervisor payloads: VMXON, the VMX instructions (counted), a VM entry/exit path,
//! and one [`Vmcs`] interface with two implementations: a classic, processor-owned VMCS
//! ([`ClassicVmcs`]: VMCLEAR/VMPTRLD/VMREAD/VMWRITE) and a Hyper-V enlightened VMCS
//! ([`EnlightenedVmcs`]: an ordinary page written through `evmcs-layout`, announced through the
//! VP assist page, clean fields maintained, no VMPTRLD and no VMREAD/VMWRITE).
//!
//! These payloads run only where the guest has VMX (a nested-capable Intel host, such as the
//! emulated Intel host); there the L1 code runs in VMX non-root mode and every VMX instruction
//! exits to KVM's nested VMX. guest-build lets only the payloads it lists in `VMX_PAYLOADS` use
//! VMX instructions (never `vmcall`).
//!
//! Facts used (Intel SDM Vol. 3C, chapters 24-27 and appendix A; TLFS for the eVMCS):
//! - VMXON needs CR4.VMXE, CR0/CR4 within IA32_VMX_CR{0,4}_FIXED{0,1}, IA32_FEATURE_CONTROL
//!   locked with "VMXON outside SMX", and a 4 KiB region starting with the VMCS revision
//!   identifier, IA32_VMX_BASIC[30:0].
//! - A control's allowed settings: bits clear in the low dword of its capability MSR may be 0,
//!   bits set in the high dword may be 1. With IA32_VMX_BASIC[55] the TRUE_* MSRs apply.
//! - VMfailInvalid sets CF, VMfailValid sets ZF (and VM_INSTRUCTION_ERROR).
//! - The host-state area needs a non-zero TR selector, so [`load_gdt_and_tss`] installs a GDT with
//!   a TSS of this module.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use evmcs_layout::{
    access, vmcs as field, vp_assist, AccessError, CleanFields, PageRead, PageWrite,
};

use crate::x86::{rdmsr, read_cr0, read_cr3, read_cr4, wrmsr};

/// MSR indices (SDM Vol. 4 and appendix A).
pub mod msr {
    /// IA32_FEATURE_CONTROL.
    pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
    /// IA32_FEATURE_CONTROL bit 0: locked.
    pub const FEATURE_CONTROL_LOCKED: u64 = 1 << 0;
    /// IA32_FEATURE_CONTROL bit 2: VMXON allowed outside SMX.
    pub const FEATURE_CONTROL_VMXON_OUTSIDE_SMX: u64 = 1 << 2;
    /// IA32_VMX_BASIC.
    pub const IA32_VMX_BASIC: u32 = 0x480;
    /// IA32_VMX_PINBASED_CTLS.
    pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
    /// IA32_VMX_PROCBASED_CTLS.
    pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
    /// IA32_VMX_EXIT_CTLS.
    pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
    /// IA32_VMX_ENTRY_CTLS.
    pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
    /// IA32_VMX_CR0_FIXED0.
    pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
    /// IA32_VMX_CR0_FIXED1.
    pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
    /// IA32_VMX_CR4_FIXED0.
    pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
    /// IA32_VMX_CR4_FIXED1.
    pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
    /// IA32_VMX_TRUE_PINBASED_CTLS (the TRUE MSRs are the four after it).
    pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48D;
    /// IA32_EFER.
    pub const IA32_EFER: u32 = 0xC000_0080;
    /// IA32_FS_BASE.
    pub const IA32_FS_BASE: u32 = 0xC000_0100;
    /// IA32_GS_BASE.
    pub const IA32_GS_BASE: u32 = 0xC000_0101;
}

/// Primary processor-based control: HLT exiting.
pub const PROC_HLT_EXITING: u32 = 1 << 7;
/// VM-exit control: host address-space size (64-bit host).
pub const EXIT_HOST_ADDR_SPACE_SIZE: u32 = 1 << 9;
/// VM-exit control: load IA32_EFER.
pub const EXIT_LOAD_EFER: u32 = 1 << 21;
/// VM-entry control: IA-32e mode guest.
pub const ENTRY_IA32E_MODE: u32 = 1 << 9;
/// VM-entry control: load IA32_EFER.
pub const ENTRY_LOAD_EFER: u32 = 1 << 15;
/// CR4.VMXE.
pub const CR4_VMXE: u64 = 1 << 13;
/// CPUID.1:ECX.VMX.
pub const CPUID_VMX: u32 = 1 << 5;

/// Basic exit reason: CPUID.
pub const EXIT_CPUID: u32 = 10;
/// Basic exit reason: HLT.
pub const EXIT_HLT: u32 = 12;
/// Exit reason bit 31: VM-entry failure.
pub const EXIT_ENTRY_FAILURE: u32 = 1 << 31;

/// The selectors of this module's GDT (the contract's code and data selectors are kept).
pub const CODE_SELECTOR: u16 = 0x10;
/// Data selector.
pub const DATA_SELECTOR: u16 = 0x18;
/// TSS selector.
pub const TSS_SELECTOR: u16 = 0x20;
/// Limit of the TSS (a 104-byte 64-bit TSS, no I/O bitmap).
pub const TSS_LIMIT: u32 = 0x67;

/// How a VMX instruction failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFail {
    /// VMfailInvalid (CF = 1): no current VMCS, or it could not be used.
    Invalid,
    /// VMfailValid (ZF = 1): the reason is in VM_INSTRUCTION_ERROR.
    Valid,
}

impl VmFail {
    /// 1 for VMfailInvalid, 2 for VMfailValid (how payloads report it).
    pub fn code(self) -> u64 {
        match self {
            VmFail::Invalid => 1,
            VmFail::Valid => 2,
        }
    }
}

fn check(rflags: u64) -> Result<(), VmFail> {
    if rflags & 1 != 0 {
        Err(VmFail::Invalid)
    } else if rflags & (1 << 6) != 0 {
        Err(VmFail::Valid)
    } else {
        Ok(())
    }
}

static VMREADS: AtomicU64 = AtomicU64::new(0);
static VMWRITES: AtomicU64 = AtomicU64::new(0);

/// VMREAD and VMWRITE instructions executed so far by this vCPU's L1 code: (reads, writes).
pub fn instruction_counts() -> (u64, u64) {
    (
        VMREADS.load(Ordering::Relaxed),
        VMWRITES.load(Ordering::Relaxed),
    )
}

fn bump(counter: &AtomicU64) {
    // One vCPU runs L1: a plain load and store, no locked instruction.
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// VMXON with the region at physical address `region`.
///
/// # Safety
/// `region` must be a 4 KiB-aligned page of this payload that nothing else uses, holding the
/// VMCS revision identifier; CR0/CR4 and IA32_FEATURE_CONTROL must allow VMXON.
pub unsafe fn vmxon(region: u64) -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: delegated to the caller; the operand is a memory qword holding the address.
    unsafe {
        asm!("vmxon [{pa}]", "pushfq", "pop {fl}", pa = in(reg) &region, fl = lateout(reg) rflags)
    };
    check(rflags)
}

/// VMCLEAR of the VMCS at physical address `vmcs`.
pub fn vmclear(vmcs: u64) -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: VMCLEAR makes the processor write back VMCS data into the region, which is a page
    // of this payload reserved for that; no Rust reference to it is live across the asm.
    unsafe {
        asm!("vmclear [{pa}]", "pushfq", "pop {fl}", pa = in(reg) &vmcs, fl = lateout(reg) rflags)
    };
    check(rflags)
}

/// VMPTRLD of the VMCS at physical address `vmcs`.
pub fn vmptrld(vmcs: u64) -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: as for `vmclear`.
    unsafe {
        asm!("vmptrld [{pa}]", "pushfq", "pop {fl}", pa = in(reg) &vmcs, fl = lateout(reg) rflags)
    };
    check(rflags)
}

/// VMREAD of `encoding` from the current VMCS (counted).
pub fn vmread(encoding: u32) -> Result<u64, VmFail> {
    bump(&VMREADS);
    let (value, rflags): (u64, u64);
    // SAFETY: VMREAD only writes its register operand and RFLAGS.
    unsafe {
        asm!("vmread {v}, {f}", "pushfq", "pop {fl}", f = in(reg) u64::from(encoding),
             v = out(reg) value, fl = lateout(reg) rflags)
    };
    check(rflags).map(|()| value)
}

/// VMWRITE of `value` to `encoding` in the current VMCS (counted).
pub fn vmwrite(encoding: u32, value: u64) -> Result<(), VmFail> {
    bump(&VMWRITES);
    let rflags: u64;
    // SAFETY: VMWRITE changes the current VMCS only, which Rust does not see.
    unsafe {
        asm!("vmwrite {f}, {v}", "pushfq", "pop {fl}", f = in(reg) u64::from(encoding),
             v = in(reg) value, fl = lateout(reg) rflags)
    };
    check(rflags)
}

/// The VMX capability MSRs this module needs.
#[derive(Clone, Copy, Debug)]
pub struct VmxCaps {
    /// IA32_VMX_BASIC.
    pub basic: u64,
    /// Pin-based controls (TRUE MSR where available).
    pub pin: u64,
    /// Primary processor-based controls.
    pub proc: u64,
    /// VM-exit controls.
    pub exit: u64,
    /// VM-entry controls.
    pub entry: u64,
    /// IA32_VMX_CR0_FIXED0/1.
    pub cr0_fixed: (u64, u64),
    /// IA32_VMX_CR4_FIXED0/1.
    pub cr4_fixed: (u64, u64),
}

impl VmxCaps {
    /// Reads the capability MSRs (the TRUE_* controls when IA32_VMX_BASIC[55] says they exist).
    pub fn read() -> Self {
        let basic = rdmsr(msr::IA32_VMX_BASIC);
        let first = if basic & (1 << 55) != 0 {
            msr::IA32_VMX_TRUE_PINBASED_CTLS
        } else {
            msr::IA32_VMX_PINBASED_CTLS
        };
        VmxCaps {
            basic,
            pin: rdmsr(first),
            proc: rdmsr(first + 1),
            exit: rdmsr(first + 2),
            entry: rdmsr(first + 3),
            cr0_fixed: (
                rdmsr(msr::IA32_VMX_CR0_FIXED0),
                rdmsr(msr::IA32_VMX_CR0_FIXED1),
            ),
            cr4_fixed: (
                rdmsr(msr::IA32_VMX_CR4_FIXED0),
                rdmsr(msr::IA32_VMX_CR4_FIXED1),
            ),
        }
    }

    /// The VMCS revision identifier, IA32_VMX_BASIC[30:0].
    pub fn revision(&self) -> u32 {
        (self.basic & 0x7fff_ffff) as u32
    }

    /// Whether the TRUE_* control MSRs were used.
    pub fn true_controls(&self) -> bool {
        self.basic & (1 << 55) != 0
    }
}

/// `want` adjusted to a control's capability MSR `cap`: the must-be-one bits (low dword) added;
/// `Err(bits)` names the wanted bits the processor does not allow (high dword clear).
pub fn adjust(want: u32, cap: u64) -> Result<u32, u32> {
    let (must, may) = (cap as u32, (cap >> 32) as u32);
    match want & !may {
        0 => Ok(want | must),
        missing => Err(missing),
    }
}

/// A page-aligned 4 KiB page that the processor or L0 may write behind the compiler's back
/// (VMXON region, VMCS, eVMCS, VP assist page). Accessed only with volatile operations.
#[repr(C, align(4096))]
pub struct HwPage(UnsafeCell<[u8; 4096]>);

// SAFETY: accessed only through volatile raw-pointer operations, by the one vCPU running L1.
unsafe impl Sync for HwPage {}

impl HwPage {
    /// A zeroed page (in .bss).
    pub const fn zeroed() -> Self {
        HwPage(UnsafeCell::new([0; 4096]))
    }

    /// Its guest-physical (= virtual) address.
    pub fn addr(&self) -> u64 {
        self.0.get() as u64
    }

    /// A handle for `evmcs-layout`'s accessors.
    pub fn bytes(&self) -> PageBytes {
        PageBytes(self.0.get().cast())
    }
}

/// Volatile byte access to an [`HwPage`], for `evmcs-layout`'s [`PageRead`]/[`PageWrite`].
#[derive(Clone, Copy, Debug)]
pub struct PageBytes(*mut u8);

impl PageBytes {
    fn range(offset: usize, len: usize) -> Result<(), AccessError> {
        match offset.checked_add(len) {
            Some(end) if end <= 4096 => Ok(()),
            _ => Err(AccessError::OutOfBounds {
                offset,
                len,
                available: 4096,
            }),
        }
    }
}

impl PageRead for PageBytes {
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), AccessError> {
        Self::range(offset, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: in bounds (checked); the page lives forever.
            *b = unsafe { self.0.add(offset + i).read_volatile() };
        }
        Ok(())
    }

    fn read_le(&self, offset: usize, size: usize) -> Result<u64, AccessError> {
        Self::range(offset, size)?;
        // SAFETY: in bounds (checked); each access is naturally aligned (the match guards it).
        unsafe {
            let p = self.0.add(offset);
            Ok(match size {
                1 => u64::from(p.read_volatile()),
                2 if offset % 2 == 0 => u64::from(p.cast::<u16>().read_volatile()),
                4 if offset % 4 == 0 => u64::from(p.cast::<u32>().read_volatile()),
                8 if offset % 8 == 0 => p.cast::<u64>().read_volatile(),
                _ => {
                    let mut raw = [0u8; 8];
                    let dst = raw.get_mut(..size).ok_or(AccessError::OutOfBounds {
                        offset,
                        len: size,
                        available: 8,
                    })?;
                    self.read_bytes(offset, dst)?;
                    u64::from_le_bytes(raw)
                }
            })
        }
    }
}

impl PageWrite for PageBytes {
    fn write_bytes(&mut self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        Self::range(offset, data.len())?;
        for (i, b) in data.iter().enumerate() {
            // SAFETY: in bounds (checked).
            unsafe { self.0.add(offset + i).write_volatile(*b) };
        }
        Ok(())
    }

    fn write_le(&mut self, offset: usize, size: usize, value: u64) -> Result<(), AccessError> {
        Self::range(offset, size)?;
        // SAFETY: in bounds (checked); each access is naturally aligned (the match guards it).
        unsafe {
            let p = self.0.add(offset);
            match size {
                1 => p.write_volatile(value as u8),
                2 if offset % 2 == 0 => p.cast::<u16>().write_volatile(value as u16),
                4 if offset % 4 == 0 => p.cast::<u32>().write_volatile(value as u32),
                8 if offset % 8 == 0 => p.cast::<u64>().write_volatile(value),
                _ => {
                    let raw = value.to_le_bytes();
                    let src = raw.get(..size).ok_or(AccessError::OutOfBounds {
                        offset,
                        len: size,
                        available: 8,
                    })?;
                    return self.write_bytes(offset, src);
                }
            }
        }
        Ok(())
    }
}

#[repr(C, align(16))]
struct Gdt(UnsafeCell<[u64; 6]>);
#[repr(C, align(16))]
struct Tss(UnsafeCell<[u8; 104]>);
// SAFETY: written once by `load_gdt_and_tss` before the CPU uses them; one vCPU.
unsafe impl Sync for Gdt {}
// SAFETY: as for `Gdt`.
unsafe impl Sync for Tss {}

static GDT: Gdt = Gdt(UnsafeCell::new([0; 6]));
static TSS: Tss = Tss(UnsafeCell::new([0; 104]));

/// Present, DPL 0, code execute/read accessed, L = 1 (64-bit), G = 1, limit 0xFFFFF.
const CODE_DESC: u64 = 0x00af_9b00_0000_ffff;
/// Present, DPL 0, data read/write accessed, D/B = 1, G = 1, limit 0xFFFFF.
const DATA_DESC: u64 = 0x00cf_9300_0000_ffff;

#[repr(C, packed)]
struct DescriptorTablePointer {
    limit: u16,
    base: u64,
}

/// Where the descriptor tables are, for the host- and guest-state areas.
#[derive(Clone, Copy, Debug)]
pub struct Tables {
    /// GDTR base and limit.
    pub gdt: (u64, u16),
    /// IDTR base and limit.
    pub idt: (u64, u16),
    /// TR base (this module's TSS).
    pub tss: u64,
}

/// Installs this module's GDT (null, null, 64-bit code 0x10, data 0x18, TSS 0x20) and loads TR
/// with its TSS; reloads every segment register. Call once, at CPL0, before VMXON.
pub fn load_gdt_and_tss() -> Tables {
    let tss_base = TSS.0.get() as u64;
    let limit = u64::from(TSS_LIMIT);
    // Available 64-bit TSS (type 9), present, DPL 0.
    let tss_low = (limit & 0xffff)
        | ((tss_base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((tss_base >> 24) & 0xff) << 56);
    let gdt = GDT.0.get().cast::<u64>();
    // SAFETY: our own 6-entry static, not loaded yet.
    unsafe {
        gdt.add(2).write_volatile(CODE_DESC);
        gdt.add(3).write_volatile(DATA_DESC);
        gdt.add(4).write_volatile(tss_low);
        gdt.add(5).write_volatile(tss_base >> 32);
    }
    let gdtr = DescriptorTablePointer {
        limit: (6 * 8 - 1) as u16,
        base: gdt as u64,
    };
    // SAFETY: the new GDT has the contract's code and data descriptors at the selectors in use;
    // CS is reloaded with a far return to the next instruction, the data selectors with movs;
    // LTR marks our TSS busy. The tables live forever.
    unsafe {
        asm!(
            "lgdt [{gdtr}]",
            "mov ds, {data:x}",
            "mov es, {data:x}",
            "mov ss, {data:x}",
            "mov fs, {data:x}",
            "mov gs, {data:x}",
            "push {code}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "ltr {tss:x}",
            gdtr = in(reg) &gdtr,
            data = in(reg) u64::from(DATA_SELECTOR),
            code = in(reg) u64::from(CODE_SELECTOR),
            tss = in(reg) u64::from(TSS_SELECTOR),
            tmp = out(reg) _,
        )
    };
    let mut idtr = DescriptorTablePointer { limit: 0, base: 0 };
    // SAFETY: SIDT only stores into `idtr`.
    unsafe { asm!("sidt [{}]", in(reg) &raw mut idtr, options(nostack, preserves_flags)) };
    Tables {
        gdt: (gdt as u64, 6 * 8 - 1),
        idt: (idtr.base, idtr.limit),
        tss: tss_base,
    }
}

/// Why VMX operation could not be entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxonError {
    /// CPUID.1:ECX.VMX is clear.
    NoVmx,
    /// IA32_FEATURE_CONTROL is locked without "VMXON outside SMX" (the value).
    FeatureControlLocked(u64),
    /// VMXON itself failed.
    Vmxon(VmFail),
}

/// Enters VMX operation with `region` as the VMXON region: locks IA32_FEATURE_CONTROL with
/// "VMXON outside SMX" if the VMM left it unlocked, puts CR0/CR4 within the fixed bits (CR4.VMXE
/// included), writes the revision identifier, VMXON. Returns IA32_FEATURE_CONTROL as used.
pub fn enable(region: &HwPage, caps: &VmxCaps) -> Result<u64, VmxonError> {
    if crate::x86::cpuid(1, 0).ecx & CPUID_VMX == 0 {
        return Err(VmxonError::NoVmx);
    }
    let mut feature = rdmsr(msr::IA32_FEATURE_CONTROL);
    if feature & msr::FEATURE_CONTROL_LOCKED == 0 {
        feature |= msr::FEATURE_CONTROL_LOCKED | msr::FEATURE_CONTROL_VMXON_OUTSIDE_SMX;
        // SAFETY: IA32_FEATURE_CONTROL only gates VMXON/SMX.
        unsafe { wrmsr(msr::IA32_FEATURE_CONTROL, feature) };
    } else if feature & msr::FEATURE_CONTROL_VMXON_OUTSIDE_SMX == 0 {
        return Err(VmxonError::FeatureControlLocked(feature));
    }
    let cr0 = (read_cr0() | caps.cr0_fixed.0) & caps.cr0_fixed.1;
    let cr4 = (read_cr4() | caps.cr4_fixed.0 | CR4_VMXE) & caps.cr4_fixed.1;
    // SAFETY: the fixed-0 bits of CR0 under VMX are PE, NE and PG (paging stays on, NE only
    // changes how x87 errors are reported); CR4 gains VMXE.
    unsafe {
        asm!("mov cr0, {}", in(reg) cr0, options(nostack, preserves_flags));
        asm!("mov cr4, {}", in(reg) cr4, options(nostack, preserves_flags));
    }
    let mut bytes = region.bytes();
    bytes
        .write_le(0, 4, u64::from(caps.revision()))
        .map_err(|_| VmxonError::Vmxon(VmFail::Invalid))?;
    // SAFETY: the region is ours, aligned and carries the revision; VMXON is allowed now.
    unsafe { vmxon(region.addr()) }.map_err(VmxonError::Vmxon)?;
    Ok(feature)
}

/// L2's general-purpose registers, saved on each VM exit and loaded on each entry. RSP lives in
/// the VMCS (GUEST_RSP); its slot here is unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestRegs {
    /// RAX (offset 0).
    pub rax: u64,
    /// RCX (8).
    pub rcx: u64,
    /// RDX (16).
    pub rdx: u64,
    /// RBX (24).
    pub rbx: u64,
    /// Unused (32).
    pub rsp: u64,
    /// RBP (40).
    pub rbp: u64,
    /// RSI (48).
    pub rsi: u64,
    /// RDI (56).
    pub rdi: u64,
    /// R8 .. R15 (64..120).
    pub r: [u64; 8],
}

// The entry/exit path. `hvkvm_vmx_run(regs, resume, ctx, set_host_rsp)`:
// saves the callee-saved registers and `regs` on the stack, calls `set_host_rsp(ctx, rsp)` so
// that HOST_RSP is exactly the stack pointer at VMLAUNCH/VMRESUME, loads L2's registers and
// enters (VMRESUME when `resume` is non-zero). A VM-fail falls through: it returns 1 for
// VMfailInvalid (CF) and 2 for VMfailValid. A VM exit arrives at `hvkvm_vmx_exit` (HOST_RIP)
// with RSP = HOST_RSP: it stores L2's registers into `regs`, restores ours and returns 0.
global_asm!(
    ".pushsection .text.hvkvm_vmx, \"ax\"",
    ".global hvkvm_vmx_run",
    "hvkvm_vmx_run:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rdi",
    "mov rbx, rsi",
    "mov rax, rcx",
    "mov rdi, rdx",
    "mov rsi, rsp",
    "call rax",
    "mov rax, [rsp]",
    "test rbx, rbx",
    "mov rcx, [rax + 8]",
    "mov rdx, [rax + 16]",
    "mov rbx, [rax + 24]",
    "mov rbp, [rax + 40]",
    "mov rsi, [rax + 48]",
    "mov rdi, [rax + 56]",
    "mov r8, [rax + 64]",
    "mov r9, [rax + 72]",
    "mov r10, [rax + 80]",
    "mov r11, [rax + 88]",
    "mov r12, [rax + 96]",
    "mov r13, [rax + 104]",
    "mov r14, [rax + 112]",
    "mov r15, [rax + 120]",
    "mov rax, [rax]",
    "jnz .Lhvkvm_vmx_resume",
    "vmlaunch",
    "jmp .Lhvkvm_vmx_fail",
    ".Lhvkvm_vmx_resume:",
    "vmresume",
    ".Lhvkvm_vmx_fail:",
    "mov eax, 2",
    "mov ecx, 1",
    "cmovc eax, ecx",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".global hvkvm_vmx_exit",
    "hvkvm_vmx_exit:",
    "push rax",
    "mov rax, [rsp + 8]",
    "mov [rax + 8], rcx",
    "mov [rax + 16], rdx",
    "mov [rax + 24], rbx",
    "mov [rax + 40], rbp",
    "mov [rax + 48], rsi",
    "mov [rax + 56], rdi",
    "mov [rax + 64], r8",
    "mov [rax + 72], r9",
    "mov [rax + 80], r10",
    "mov [rax + 88], r11",
    "mov [rax + 96], r12",
    "mov [rax + 104], r13",
    "mov [rax + 112], r14",
    "mov [rax + 120], r15",
    "pop rcx",
    "mov [rax], rcx",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "xor eax, eax",
    "ret",
    ".popsection",
);

unsafe extern "sysv64" {
    fn hvkvm_vmx_run(regs: *mut GuestRegs, resume: u64, ctx: *mut (), set_host_rsp: usize) -> u64;
    fn hvkvm_vmx_exit();
}

/// HOST_RIP: where VM exits land.
pub fn host_rip() -> u64 {
    hvkvm_vmx_exit as *const () as u64
}

extern "sysv64" fn set_host_rsp<V: Vmcs>(ctx: *mut (), rsp: u64) {
    // SAFETY: `ctx` is the `&mut V` that `enter` turned into a raw pointer for this call; it
    // is not used otherwise while the callback runs.
    let vmcs = unsafe { &mut *ctx.cast::<V>() };
    vmcs.set_host_rsp(rsp);
}

/// Enters L2 through `vmcs` with `regs` (VMLAUNCH unless `resume`) and returns at its next VM
/// exit with `regs` updated, or with the VM-fail.
pub fn enter<V: Vmcs>(vmcs: &mut V, regs: &mut GuestRegs, resume: bool) -> Result<(), VmFail> {
    let ctx = (vmcs as *mut V).cast::<()>();
    // SAFETY: the VMCS was set up by the caller with HOST_RIP = `host_rip()` and this module's
    // host state, so a VM exit resumes inside `hvkvm_vmx_exit` on this very stack frame, which
    // restores every callee-saved register; L2 runs on its own stack and (sharing our page
    // tables) may write memory, hence no `nomem`-like assumptions: the call is opaque.
    let rc = unsafe {
        hvkvm_vmx_run(
            regs,
            u64::from(resume),
            ctx,
            set_host_rsp::<V> as *const () as usize,
        )
    };
    match rc {
        0 => Ok(()),
        1 => Err(VmFail::Invalid),
        _ => Err(VmFail::Valid),
    }
}

/// The operations an L1 hypervisor needs from a VMCS, whichever kind it is.
pub trait Vmcs {
    /// Whether this is an enlightened VMCS (no VMX instructions on it).
    const ENLIGHTENED: bool;
    /// Writes a field. An eVMCS clears the clean bit of the field's group.
    fn write(&mut self, encoding: u32, value: u64);
    /// Reads a field.
    fn read(&mut self, encoding: u32) -> u64;
    /// Writes a field without telling L0: an eVMCS leaves the clean bits as they are (so L0 may
    /// keep its cached copy); a classic VMCS is the same as [`Vmcs::write`].
    fn write_keeping_clean(&mut self, encoding: u32, value: u64);
    /// Clears the clean bits of `groups` (eVMCS; nothing for a classic VMCS).
    fn mark_dirty(&mut self, groups: CleanFields);
    /// Called after each VM exit: L0 has consumed every field, so an eVMCS sets every clean bit.
    fn exited(&mut self);
    /// The last HOST_RSP written.
    fn cached_host_rsp(&mut self) -> &mut u64;
    /// Writes HOST_RSP when it changed (called on the entry path).
    fn set_host_rsp(&mut self, rsp: u64) {
        if *self.cached_host_rsp() != rsp {
            *self.cached_host_rsp() = rsp;
            self.write(field::HOST_RSP, rsp);
        }
    }
}

/// A processor-owned VMCS: VMCLEAR + VMPTRLD once, then VMREAD/VMWRITE.
#[derive(Debug)]
pub struct ClassicVmcs {
    host_rsp: u64,
}

impl ClassicVmcs {
    /// Writes `revision` into `region`, VMCLEARs it and makes it current.
    pub fn load(region: &HwPage, revision: u32) -> Result<Self, VmFail> {
        let mut bytes = region.bytes();
        bytes
            .write_le(0, 4, u64::from(revision))
            .map_err(|_| VmFail::Invalid)?;
        vmclear(region.addr())?;
        vmptrld(region.addr())?;
        Ok(ClassicVmcs { host_rsp: 0 })
    }
}

impl Vmcs for ClassicVmcs {
    const ENLIGHTENED: bool = false;

    fn write(&mut self, encoding: u32, value: u64) {
        if let Err(e) = vmwrite(encoding, value) {
            vmx_failed("VMWRITE failed", encoding, e);
        }
    }

    fn read(&mut self, encoding: u32) -> u64 {
        vmread(encoding).unwrap_or_else(|e| vmx_failed("VMREAD failed", encoding, e))
    }

    fn write_keeping_clean(&mut self, encoding: u32, value: u64) {
        self.write(encoding, value);
    }

    fn mark_dirty(&mut self, _groups: CleanFields) {}

    fn exited(&mut self) {}

    fn cached_host_rsp(&mut self) -> &mut u64 {
        &mut self.host_rsp
    }
}

#[cold]
fn vmx_failed(what: &'static str, encoding: u32, e: VmFail) -> ! {
    let error = if e == VmFail::Valid {
        vmread(field::VM_INSTRUCTION_ERROR).unwrap_or(u64::MAX)
    } else {
        u64::MAX
    };
    crate::ucall::assert_fail(
        file!(),
        line!(),
        what,
        u64::from(encoding) | (e.code() << 32),
        error,
    )
}

/// A Hyper-V enlightened VMCS (TLFS "Enlightened VMCS"): a zeroed page written with
/// `evmcs-layout`, announced through the VP assist page (`current_nested_vmcs`,
/// `enlighten_vmentry`); L0 reloads only the groups whose clean bit is clear.
#[derive(Debug)]
pub struct EnlightenedVmcs {
    evmcs: PageBytes,
    host_rsp: u64,
}

/// MSR HV_X64_MSR_VP_ASSIST_PAGE.
pub const VP_ASSIST_PAGE_MSR: u32 = vp_assist::HV_X64_MSR_VP_ASSIST_PAGE;

impl EnlightenedVmcs {
    /// Initialises `evmcs` (zeroed, revision `revision`: [`evmcs_layout::EVMCS_VERSION`] for a
    /// valid one), enables `assist` as this VP's assist page and announces the eVMCS there.
    pub fn announce(evmcs: &HwPage, assist: &HwPage, revision: u32) -> Self {
        let mut bytes = evmcs.bytes();
        let mut assist_bytes = assist.bytes();
        let ok = access::initialize(&mut bytes).is_ok()
            && bytes.write_le(0, 4, u64::from(revision)).is_ok()
            && vp_assist::set_current_evmcs(&mut assist_bytes, Some(evmcs.addr())).is_ok();
        if !ok {
            crate::ucall::assert_fail(file!(), line!(), "cannot initialise the eVMCS", 0, 0);
        }
        // SAFETY: enabling the VP assist page makes L0 read (and write) that page, which is ours
        // and reserved for it.
        unsafe {
            wrmsr(
                VP_ASSIST_PAGE_MSR,
                assist.addr() | vp_assist::VP_ASSIST_PAGE_ENABLE,
            )
        };
        EnlightenedVmcs {
            evmcs: bytes,
            host_rsp: 0,
        }
    }

    /// Sets the revision identifier (for the wrong-revision row, then the right one).
    pub fn set_revision(&mut self, revision: u32) {
        if self.evmcs.write_le(0, 4, u64::from(revision)).is_err() {
            crate::ucall::assert_fail(file!(), line!(), "cannot write the revision", 0, 0);
        }
    }

    /// The clean-fields word.
    pub fn clean_fields(&self) -> CleanFields {
        access::clean_fields(&self.evmcs).unwrap_or(CleanFields::empty())
    }

    fn failed(what: &'static str, encoding: u32, e: AccessError) -> ! {
        let code = match e {
            AccessError::InvalidEncoding(_) => 1,
            AccessError::NotInEvmcs(_) => 2,
            AccessError::OutOfBounds { .. } => 3,
            AccessError::Backing { .. } => 4,
        };
        crate::ucall::assert_fail(file!(), line!(), what, u64::from(encoding), code)
    }
}

impl Vmcs for EnlightenedVmcs {
    const ENLIGHTENED: bool = true;

    fn write(&mut self, encoding: u32, value: u64) {
        if let Err(e) = access::write_field_and_dirty(&mut self.evmcs, encoding, value) {
            Self::failed("eVMCS write failed", encoding, e);
        }
    }

    fn read(&mut self, encoding: u32) -> u64 {
        access::read_field(&self.evmcs, encoding)
            .unwrap_or_else(|e| Self::failed("eVMCS read failed", encoding, e))
    }

    fn write_keeping_clean(&mut self, encoding: u32, value: u64) {
        if let Err(e) = access::write_field(&mut self.evmcs, encoding, value) {
            Self::failed("eVMCS write failed", encoding, e);
        }
    }

    fn mark_dirty(&mut self, groups: CleanFields) {
        let clean = self.clean_fields().difference(groups);
        if access::set_clean_fields(&mut self.evmcs, clean).is_err() {
            crate::ucall::assert_fail(file!(), line!(), "cannot write clean fields", 0, 0);
        }
    }

    fn exited(&mut self) {
        if access::set_clean_fields(&mut self.evmcs, CleanFields::ALL).is_err() {
            crate::ucall::assert_fail(file!(), line!(), "cannot write clean fields", 0, 0);
        }
    }

    fn cached_host_rsp(&mut self) -> &mut u64 {
        &mut self.host_rsp
    }
}

/// Everything the VMCS needs about L1 and L2 that [`setup`] writes.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// Adjusted controls: pin-based, primary processor-based, exit, entry.
    pub controls: [u32; 4],
    /// Descriptor tables (shared by L1 and L2).
    pub tables: Tables,
    /// L2's entry point and stack pointer.
    pub guest_rip: u64,
    /// L2's RSP.
    pub guest_rsp: u64,
    /// CR4 bits L1 owns (guest/host mask) and their read shadow.
    pub cr4_mask: u64,
    /// CR4 read shadow.
    pub cr4_shadow: u64,
}

/// The controls an L1 of these payloads uses (HLT exiting; CPUID always exits; a 64-bit host
/// loading IA32_EFER; an IA-32e mode guest loading IA32_EFER), adjusted to `caps`.
/// `Err((control index, missing bits))` when the processor does not allow one.
pub fn controls(caps: &VmxCaps) -> Result<[u32; 4], (u64, u32)> {
    let wanted = [
        (0, caps.pin),
        (PROC_HLT_EXITING, caps.proc),
        (EXIT_HOST_ADDR_SPACE_SIZE | EXIT_LOAD_EFER, caps.exit),
        (ENTRY_IA32E_MODE | ENTRY_LOAD_EFER, caps.entry),
    ];
    let mut out = [0u32; 4];
    for (i, ((want, cap), slot)) in wanted.iter().zip(out.iter_mut()).enumerate() {
        *slot = adjust(*want, *cap).map_err(|missing| (i as u64, missing))?;
    }
    Ok(out)
}

/// Writes every control, host-state and guest-state field for an L2 that runs 64-bit code at
/// CPL0 on L1's own page tables (no EPT), with L1's GDT, IDT and TSS.
pub fn setup<V: Vmcs>(v: &mut V, s: &Setup) {
    let [pin, proc, exit, entry] = s.controls;
    let efer = rdmsr(msr::IA32_EFER);
    let (cr0, cr3, cr4) = (read_cr0(), read_cr3(), read_cr4());
    let (gdt_base, gdt_limit) = s.tables.gdt;
    let (idt_base, idt_limit) = s.tables.idt;

    // Controls.
    v.write(field::PIN_BASED_VM_EXEC_CONTROL, u64::from(pin));
    v.write(field::CPU_BASED_VM_EXEC_CONTROL, u64::from(proc));
    v.write(field::VM_EXIT_CONTROLS, u64::from(exit));
    v.write(field::VM_ENTRY_CONTROLS, u64::from(entry));
    v.write(field::EXCEPTION_BITMAP, 0);
    v.write(field::CR3_TARGET_COUNT, 0);
    v.write(field::VM_EXIT_MSR_STORE_COUNT, 0);
    v.write(field::VM_EXIT_MSR_LOAD_COUNT, 0);
    v.write(field::VM_ENTRY_MSR_LOAD_COUNT, 0);
    v.write(field::VM_ENTRY_INTR_INFO_FIELD, 0);
    v.write(field::CR0_GUEST_HOST_MASK, 0);
    v.write(field::CR0_READ_SHADOW, cr0);
    v.write(field::CR4_GUEST_HOST_MASK, s.cr4_mask);
    v.write(field::CR4_READ_SHADOW, s.cr4_shadow);

    // Host state: L1 as it runs now; VM exits land in `hvkvm_vmx_exit`.
    v.write(field::HOST_CR0, cr0);
    v.write(field::HOST_CR3, cr3);
    v.write(field::HOST_CR4, cr4);
    v.write(field::HOST_IA32_EFER, efer);
    for enc in [
        field::HOST_ES_SELECTOR,
        field::HOST_SS_SELECTOR,
        field::HOST_DS_SELECTOR,
        field::HOST_FS_SELECTOR,
        field::HOST_GS_SELECTOR,
    ] {
        v.write(enc, u64::from(DATA_SELECTOR));
    }
    v.write(field::HOST_CS_SELECTOR, u64::from(CODE_SELECTOR));
    v.write(field::HOST_TR_SELECTOR, u64::from(TSS_SELECTOR));
    v.write(field::HOST_FS_BASE, rdmsr(msr::IA32_FS_BASE));
    v.write(field::HOST_GS_BASE, rdmsr(msr::IA32_GS_BASE));
    v.write(field::HOST_TR_BASE, s.tables.tss);
    v.write(field::HOST_GDTR_BASE, gdt_base);
    v.write(field::HOST_IDTR_BASE, idt_base);
    v.write(field::HOST_IA32_SYSENTER_CS, 0);
    v.write(field::HOST_IA32_SYSENTER_ESP, 0);
    v.write(field::HOST_IA32_SYSENTER_EIP, 0);
    v.write(field::HOST_RIP, host_rip());

    // Guest state: 64-bit, CPL0, flat segments, L1's CR0/CR3/CR4/EFER and tables.
    v.write(field::GUEST_CR0, cr0);
    v.write(field::GUEST_CR3, cr3);
    v.write(field::GUEST_CR4, cr4);
    v.write(field::GUEST_IA32_EFER, efer);
    v.write(field::GUEST_DR7, 0x400);
    v.write(field::GUEST_IA32_DEBUGCTL, 0);
    v.write(field::GUEST_RFLAGS, 0x2);
    v.write(field::GUEST_RSP, s.guest_rsp);
    v.write(field::GUEST_RIP, s.guest_rip);
    v.write(field::GUEST_ACTIVITY_STATE, 0);
    v.write(field::GUEST_INTERRUPTIBILITY_INFO, 0);
    v.write(field::GUEST_PENDING_DBG_EXCEPTIONS, 0);
    v.write(field::VMCS_LINK_POINTER, u64::MAX);
    v.write(field::GUEST_SYSENTER_CS, 0);
    v.write(field::GUEST_SYSENTER_ESP, 0);
    v.write(field::GUEST_SYSENTER_EIP, 0);
    // (selector, base field, limit field, access-rights field, selector value, access rights)
    let code_ar = 0xa09b; // present, code exec/read accessed, L = 1, G = 1
    let data_ar = 0xc093; // present, data read/write accessed, D/B = 1, G = 1
    let segments = [
        (
            field::GUEST_CS_SELECTOR,
            field::GUEST_CS_BASE,
            field::GUEST_CS_LIMIT,
            field::GUEST_CS_AR_BYTES,
            CODE_SELECTOR,
            code_ar,
        ),
        (
            field::GUEST_SS_SELECTOR,
            field::GUEST_SS_BASE,
            field::GUEST_SS_LIMIT,
            field::GUEST_SS_AR_BYTES,
            DATA_SELECTOR,
            data_ar,
        ),
        (
            field::GUEST_DS_SELECTOR,
            field::GUEST_DS_BASE,
            field::GUEST_DS_LIMIT,
            field::GUEST_DS_AR_BYTES,
            DATA_SELECTOR,
            data_ar,
        ),
        (
            field::GUEST_ES_SELECTOR,
            field::GUEST_ES_BASE,
            field::GUEST_ES_LIMIT,
            field::GUEST_ES_AR_BYTES,
            DATA_SELECTOR,
            data_ar,
        ),
        (
            field::GUEST_FS_SELECTOR,
            field::GUEST_FS_BASE,
            field::GUEST_FS_LIMIT,
            field::GUEST_FS_AR_BYTES,
            DATA_SELECTOR,
            data_ar,
        ),
        (
            field::GUEST_GS_SELECTOR,
            field::GUEST_GS_BASE,
            field::GUEST_GS_LIMIT,
            field::GUEST_GS_AR_BYTES,
            DATA_SELECTOR,
            data_ar,
        ),
    ];
    for (sel, base, limit, ar, value, rights) in segments {
        v.write(sel, u64::from(value));
        v.write(base, 0);
        v.write(limit, 0xffff_ffff);
        v.write(ar, rights);
    }
    // LDTR unusable (access rights bit 16); TR = this module's busy 64-bit TSS (type 11).
    v.write(field::GUEST_LDTR_SELECTOR, 0);
    v.write(field::GUEST_LDTR_BASE, 0);
    v.write(field::GUEST_LDTR_LIMIT, 0);
    v.write(field::GUEST_LDTR_AR_BYTES, 1 << 16);
    v.write(field::GUEST_TR_SELECTOR, u64::from(TSS_SELECTOR));
    v.write(field::GUEST_TR_BASE, s.tables.tss);
    v.write(field::GUEST_TR_LIMIT, u64::from(TSS_LIMIT));
    v.write(field::GUEST_TR_AR_BYTES, 0x8b);
    v.write(field::GUEST_GDTR_BASE, gdt_base);
    v.write(field::GUEST_GDTR_LIMIT, u64::from(gdt_limit));
    v.write(field::GUEST_IDTR_BASE, idt_base);
    v.write(field::GUEST_IDTR_LIMIT, u64::from(idt_limit));
}
