//! The 64-bit environment hvkvm builds before the first instruction: a flat GDT, identity
//! page tables over all guest RAM, and the matching segment/control registers.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use crate::memory::layout::{GDT_ADDR, IDENTITY_MAPPED_GIB, PDPT_ADDR, PD_BASE_ADDR, PML4_ADDR};
use crate::memory::{Bytes, GuestAddress, GuestMemory};

/// Selector of the 64-bit code segment (Linux's `__BOOT_CS`).
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the data segment (Linux's `__BOOT_DS`).
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the TSS (VMX requires a usable TR in long mode).
pub const TSS_SELECTOR: u16 = 0x20;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_HUGE: u64 = 1 << 7;
/// RFLAGS with only the always-one bit: interrupts disabled.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// GDT entries: null, unused, code64, data, TSS (two slots in long mode).
const GDT: [u64; 6] = [
    0,
    0,
    0x00af_9b00_0000_ffff, // 0x10: present, DPL0, execute/read, L=1, G=1
    0x00cf_9300_0000_ffff, // 0x18: present, DPL0, read/write, D/B=1, G=1
    0x0000_8b00_0000_0067, // 0x20: present, busy 64-bit TSS, limit 0x67, base 0
    0,
];

/// Errors writing the boot structures.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the boot {what} into guest memory at {addr:#x}")]
pub struct LongModeError {
    /// Which structure.
    pub what: &'static str,
    /// Where.
    pub addr: u64,
    /// The guest-memory error.
    #[source]
    pub source: vm_memory::GuestMemoryError,
}

/// Writes the GDT and the identity-mapping page tables.
pub fn write_tables(mem: &GuestMemory) -> Result<(), LongModeError> {
    let write = |what, addr: u64, value: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|source| LongModeError { what, addr, source })
    };
    for (i, entry) in GDT.iter().enumerate() {
        write("GDT", GDT_ADDR + 8 * i as u64, *entry)?;
    }
    write("PML4", PML4_ADDR, PDPT_ADDR | PTE_PRESENT | PTE_WRITABLE)?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PD_BASE_ADDR + gib * 0x1000;
        write("PDPT", PDPT_ADDR + gib * 8, pd | PTE_PRESENT | PTE_WRITABLE)?;
        for i in 0..512u64 {
            let frame = (gib << 30) | (i << 21);
            write(
                "page directory",
                pd + i * 8,
                frame | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE,
            )?;
        }
    }
    Ok(())
}

/// A flat DPL0 segment: 64-bit code (`code`) or read/write data.
pub fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Segment and control registers for long mode on hvkvm's tables, starting from `base`
/// (the vCPU's current sregs, so fields KVM set such as the APIC base are kept).
pub fn sregs(mut base: kvm_sregs) -> kvm_sregs {
    let data = segment(DATA_SELECTOR, false);
    base.cs = segment(CODE_SELECTOR, true);
    base.ds = data;
    base.es = data;
    base.fs = data;
    base.gs = data;
    base.ss = data;
    base.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: TSS_SELECTOR,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    base.gdt.base = GDT_ADDR;
    base.gdt.limit = (GDT.len() * 8 - 1) as u16;
    // No IDT: until the guest installs one, any exception becomes a triple fault that hvkvm
    // reports, instead of a jump through garbage.
    base.idt.base = 0;
    base.idt.limit = 0;
    base.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    base.cr3 = PML4_ADDR;
    base.cr4 = CR4_PAE;
    base.efer = EFER_LME | EFER_LMA;
    base
}

/// General registers entering at `rip` with the given stack and System V argument registers.
pub fn regs(rip: u64, rsp: u64, args: [u64; 3]) -> kvm_regs {
    kvm_regs {
        rip,
        rsp,
        rdi: args[0],
        rsi: args[1],
        rdx: args[2],
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_maps_with_2mib_pages() {
        let mem = crate::memory::allocate(64).unwrap();
        write_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT_ADDR);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 3 * 8)).unwrap();
        let pd3 = pdpt3 & !0xfff;
        let pde: u64 = mem.read_obj(GuestAddress(pd3 + 5 * 8)).unwrap();
        assert_eq!(pde & !0xfff, (3 << 30) | (5 << 21));
        assert_eq!(pde & 0x83, 0x83);
    }

    #[test]
    fn long_mode_registers() {
        let s = sregs(kvm_sregs::default());
        assert_eq!(s.cs.selector, CODE_SELECTOR);
        assert_eq!((s.cs.l, s.cs.db), (1, 0));
        assert_eq!(s.ss.selector, DATA_SELECTOR);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(s.cr0 & CR0_PG, 0);
        let r = regs(0x200000, 0x1000, [1, 2, 3]);
        assert_eq!((r.rdi, r.rsi, r.rdx, r.rflags), (1, 2, 3, 2));
    }
}
