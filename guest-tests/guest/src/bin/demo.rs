//! The guest `hvkvm demo` runs (on 2 vCPUs by default).
//!
//! Each vCPU prints one line with its index, the vCPU count, its initial APIC id (CPUID.1
//! EBX[31:24]) and the hypervisor vendor string (CPUID 0x4000_0000 EBX,ECX,EDX), e.g.
//!   vCPU 1 of 2: APIC id 1, hypervisor "Microsoft Hv"
//! vCPU 0 waits (bounded) until all have printed, prints a summary line and ends the VM with
//! exit status 0 through the test-exit port (status 1 if some vCPU never reported).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use hvkvm_guest::uart::CONSOLE;
use hvkvm_guest::x86::cpuid;
use hvkvm_guest::{halt_forever, spin_wait, test_exit, BootInfo};

hvkvm_guest::entry!(main);

/// vCPUs that printed their line.
static REPORTED: AtomicU64 = AtomicU64::new(0);

/// The 12-byte vendor signature of the hypervisor leaf, made printable: trailing NULs dropped
/// (KVM's is "KVMKVMKVM\0\0\0"), other non-printable bytes shown as '.'.
fn hypervisor_vendor(buf: &mut [u8; 12]) -> &[u8] {
    let leaf = cpuid(0x4000_0000, 0);
    for (chunk, reg) in buf.chunks_exact_mut(4).zip([leaf.ebx, leaf.ecx, leaf.edx]) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    let mut len = buf.len();
    while len > 0 && buf[len - 1] == 0 {
        len -= 1;
    }
    for b in &mut buf[..len] {
        if !(0x20..0x7f).contains(b) {
            *b = b'.';
        }
    }
    &buf[..len]
}

fn main(boot: BootInfo) -> ! {
    let apic_id = cpuid(1, 0).ebx >> 24;
    let mut vendor_buf = [0u8; 12];
    let vendor = hypervisor_vendor(&mut vendor_buf);

    {
        let mut uart = CONSOLE.lock();
        uart.write_str("vCPU ");
        uart.write_dec(boot.cpu_index);
        uart.write_str(" of ");
        uart.write_dec(boot.cpu_count);
        uart.write_str(": APIC id ");
        uart.write_dec(u64::from(apic_id));
        uart.write_str(", hypervisor \"");
        uart.write_bytes(vendor);
        uart.write_str("\"\n");
        // Counted under the lock: when vCPU 0 sees everyone, every line has been written.
        REPORTED.fetch_add(1, Ordering::Release);
    }

    if !boot.is_bsp() {
        halt_forever();
    }

    let all = spin_wait(|| REPORTED.load(Ordering::Acquire) == boot.cpu_count);
    let mut uart = CONSOLE.lock();
    if all {
        uart.write_str("all ");
        uart.write_dec(boot.cpu_count);
        uart.write_str(" vCPUs reported; exiting with status 0\n");
        test_exit(0)
    }
    uart.write_str("only ");
    uart.write_dec(REPORTED.load(Ordering::Acquire));
    uart.write_str(" of ");
    uart.write_dec(boot.cpu_count);
    uart.write_str(" vCPUs reported; exiting with status 1\n");
    test_exit(1)
}
