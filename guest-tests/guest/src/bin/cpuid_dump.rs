//! Prints the CPUID leaves a Hyper-V guest looks at, then exits: the payload that hvkvm and
//! QEMU both boot so their CPUID can be compared on the same host (`cpuid_diff` suite).
//!
//! One file, two boot paths, the same dump:
//! - hvkvm loads it as an ELF payload and enters `_start` in 64-bit long mode;
//! - QEMU's `-kernel` loads it as a multiboot image (the header below uses the "address
//!   fields" form, so QEMU copies the file to `IMAGE_BASE` without reading the ELF headers,
//!   which it would refuse for x86-64) and enters `multiboot_entry` in 32-bit protected mode
//!   with paging off.
//!
//! The dumper is one assembler macro instantiated once per mode. It uses only 32-bit registers,
//! a stack it sets up itself and scratch RAM below the image (the payload contract lets
//! payloads use [1 MiB, 2 MiB)), so it needs nothing from either loader.
//!
//! Output on COM1, one line per leaf (hex, no 0x):
//!   `HVKVM-CPUID-BEGIN`
//!   `HVKVM-CPUID <leaf> <subleaf> <eax> <ebx> <ecx> <edx>`   (for every leaf in the table)
//!   `HVKVM-CPUID-END`
//! then `out 0xf4, 0x21`: hvkvm's test-exit port (exit status 33) and QEMU's `isa-debug-exit`
//! at its default port (exit status 33 * 2 + 1 = 67).
#![no_std]
#![no_main]

core::arch::global_asm!(
    r#"
    .set SCRATCH, 0x1f8000
    .set STACK_TOP, 0x1f0000
    .set COM1, 0x3f8
    .set EXIT_PORT, 0xf4
    .set EXIT_STATUS, 0x21

    .macro DUMPER m
    .Lmain_\m:
        mov $STACK_TOP, %esp
        mov $.Lbegin_text, %esi
        call .Lputs_\m
        mov $.Lleaves, %ebp
    .Lnext_\m:
        mov (%ebp), %eax
        cmp $0xffffffff, %eax
        je .Lend_\m
        mov 4(%ebp), %ecx
        cpuid
        mov %eax, SCRATCH
        mov %ebx, SCRATCH + 4
        mov %ecx, SCRATCH + 8
        mov %edx, SCRATCH + 12
        mov $.Lleaf_text, %esi
        call .Lputs_\m
        mov (%ebp), %edi
        call .Lhex_\m
        mov 4(%ebp), %edi
        call .Lhex_\m
        mov SCRATCH, %edi
        call .Lhex_\m
        mov SCRATCH + 4, %edi
        call .Lhex_\m
        mov SCRATCH + 8, %edi
        call .Lhex_\m
        mov SCRATCH + 12, %edi
        call .Lhex_\m
        mov $.Lnewline, %esi
        call .Lputs_\m
        add $8, %ebp
        jmp .Lnext_\m
    .Lend_\m:
        mov $.Lend_text, %esi
        call .Lputs_\m
        mov $EXIT_PORT, %dx
        mov $EXIT_STATUS, %al
        out %al, %dx
    .Lhalt_\m:
        cli
        hlt
        jmp .Lhalt_\m

    // Writes the NUL-terminated string at ESI to COM1.
    .Lputs_\m:
        mov $COM1, %dx
    .Lputs_loop_\m:
        lodsb
        test %al, %al
        jz .Lputs_done_\m
        out %al, %dx
        jmp .Lputs_loop_\m
    .Lputs_done_\m:
        ret

    // Writes a space and EDI as 8 hex digits to COM1.
    .Lhex_\m:
        mov $COM1, %dx
        mov $0x20, %al
        out %al, %dx
        mov $8, %ecx
    .Lhex_digit_\m:
        rol $4, %edi
        mov %edi, %eax
        and $0xf, %eax
        cmp $10, %eax
        jb .Lhex_decimal_\m
        add $0x27, %eax
    .Lhex_decimal_\m:
        add $0x30, %eax
        out %al, %dx
        sub $1, %ecx
        jnz .Lhex_digit_\m
        ret
    .endm

    .section .text._start, "ax"
    .code64
    .globl _start
    _start:
        DUMPER 64

    // Everything QEMU's multiboot loader and the 32-bit path need, in a section that is
    // allocated but not marked executable: link.ld places it right after .text (inside the
    // first 8 KiB of the file, where QEMU looks for the header), and guest-build's scan of
    // 64-bit code does not try to decode 32-bit code and data. The 32-bit code is the same
    // macro as the scanned 64-bit code above.
    .section .multiboot, "a"
    // magic, flags (bit 16: the address fields below are valid), checksum, header_addr,
    // load_addr, load_end_addr (0: the rest of the file), bss_end_addr (0: none), entry_addr.
        .balign 4
    .Lmultiboot_header:
        .long 0x1badb002
        .long 0x00010000
        .long -(0x1badb002 + 0x00010000)
        .long .Lmultiboot_header
        .long __image_start
        .long 0
        .long 0
        .long multiboot_entry

    .Lleaves:
        // CPUID.1: ECX bit 5 is VMX.
        .long 0x00000001, 0
        .long 0x40000000, 0
        .long 0x40000001, 0
        .long 0x40000002, 0
        .long 0x40000003, 0
        .long 0x40000004, 0
        .long 0x40000005, 0
        .long 0x40000006, 0
        .long 0x40000007, 0
        .long 0x40000008, 0
        .long 0x40000009, 0
        .long 0x4000000a, 0
        // KVM's own leaves, where a VMM with Hyper-V leaves moved them.
        .long 0x40000100, 0
        .long 0x40000101, 0
        .long 0xffffffff, 0
    .Lbegin_text:
        .asciz "HVKVM-CPUID-BEGIN\n"
    .Lleaf_text:
        .asciz "HVKVM-CPUID"
    .Lnewline:
        .asciz "\n"
    .Lend_text:
        .asciz "HVKVM-CPUID-END\n"

        .balign 16
    .code32
    .globl multiboot_entry
    multiboot_entry:
        DUMPER 32
    .code64
    "#,
    options(att_syntax)
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
