//! One Hyper-V MSR access, with #GP/#UD caught, for the user-backend conformance tests.
//!
//! Parameters (CPUID; the host must define both leaves):
//! - 0x400000F0: EAX = op (0 = rdmsr, 1 = wrmsr, 2 = wrmsr then rdmsr of the same MSR),
//!   EBX = MSR index (0 means TIME_REF_COUNT, 0x40000020: the default for a bare run).
//! - 0x400000F1: EAX = value bits 31:0, EBX = value bits 63:32 (writes only).
//!
//! Reports:
//! - SYNC 1 = (faulted 0/1, vector (0 if none), value read (0 for a write or a fault), index).
//! - op 2 only: SYNC 2 = the same for the rdmsr that follows the write.
//! - DONE. An unknown op is an ASSERT.
#![no_std]
#![no_main]

use hvkvm_guest::hyperv::{join, param, TIME_REF_COUNT};
use hvkvm_guest::idt::{self, rdmsr_safe, wrmsr_safe};
use hvkvm_guest::{guest_assert, guest_done, guest_sync, BootInfo};

hvkvm_guest::entry!(main);

fn report(stage: u64, index: u32, result: Result<u64, u8>) {
    match result {
        Ok(value) => guest_sync!(stage, 0, 0, value, index),
        Err(vector) => guest_sync!(stage, 1, vector, 0, index),
    };
}

fn main(_boot: BootInfo) -> ! {
    idt::install();
    let p0 = param(0);
    let op = p0.eax;
    let index = if p0.ebx == 0 { TIME_REF_COUNT } else { p0.ebx };
    guest_assert!(op <= 2, "hv_msr_access: 0x400000F0.EAX (op) must be 0, 1 or 2");
    if op == 0 {
        report(1, index, rdmsr_safe(index));
    } else {
        let p1 = param(1);
        let value = join(p1.eax, p1.ebx);
        // SAFETY: the host test chooses the MSR and value; it owns the consequences (an overlay
        // page GPA must be one the payload does not use: there is none besides .bss/.data).
        report(1, index, unsafe { wrmsr_safe(index, value) }.map(|()| 0));
        if op == 2 {
            report(2, index, rdmsr_safe(index));
        }
    }
    guest_done!()
}
