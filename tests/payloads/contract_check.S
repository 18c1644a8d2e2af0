/*
 * contract_check: an hvkvm ELF test payload written only from the "Payload contract" section
 * of README.md. Every vCPU checks the entry state it can observe; vCPU 0 waits for all of them
 * to check in, prints "contract_check: N vCPUs OK" on COM1 and exits through port 0xf4 with
 * status 0x2a. A failed check prints "contract_check: FAIL <name> (vCPU i)" and exits with
 * status 0x10 + <check number>.
 *
 * Only plain integer instructions (the contract forbids SSE/AVX, XSAVE, RDTSCP, CMPXCHG16B,
 * POPCNT and BMI2 on emulating hosts). Build:
 *   cc -nostdlib -static -no-pie -Wl,--build-id=none -T contract_check.ld contract_check.S
 */

#define EXIT_OK          0x2a
#define STACK_SLOT       0x10000          /* 64 KiB per vCPU */
#define COM1_THR         0x3f8
#define COM1_LSR         0x3fd
#define TEST_EXIT_PORT   0xf4
#define WAIT_TSC_CYCLES  0x800000000      /* ~14 s at 2.4 GHz: bound on vCPU 0's wait */

/* check numbers; exit status = 0x10 + number (never 0x2a = 0x10 + 26) */
#define C_GPRS        1   /* other general registers are 0 */
#define C_IF          2   /* interrupts disabled */
#define C_RFLAGS      3   /* RFLAGS == 0x2 */
#define C_RDI_RSI     4   /* RDI < RSI */
#define C_NCPUS_MAX   5   /* 1 <= RSI <= 255 */
#define C_RAM_TOP     6   /* RDX sane: above this image, <= 4 GiB, stacks fit */
#define C_RSP_SLOT    7   /* RSP == ram_top - i*64K - 8 */
#define C_RSP_ALIGN   8   /* (RSP + 8) % 16 == 0 */
#define C_CS          9   /* CS == 0x10 (CPL0) */
#define C_SS          10  /* SS == 0x18 */
#define C_DATA_SEGS   11  /* DS == ES == FS == GS == 0x18 */
#define C_CR0         12  /* CR0.PE and CR0.PG */
#define C_CR4         13  /* CR4.PAE */
#define C_EFER        14  /* EFER.LME and EFER.LMA */
#define C_CR3         15  /* CR3 == 0x9000 */
#define C_GDT         16  /* GDT base == 0x500 */
#define C_IDT         17  /* IDT limit == 0 */
#define C_APIC_ID     18  /* CPUID.1:EBX[31:24] == vCPU index */
#define C_STACK_SLOT  19  /* bottom of own stack slot is writable RAM */
#define C_BELOW_STACK 20  /* RAM right below the stack area is writable */
#define C_RAM_1MIB    21  /* RAM at 1 MiB (payload-owned, below the image) is writable */
#define C_BSS         22  /* p_memsz beyond p_filesz is zero */
#define C_MMIO        23  /* unassigned MMIO (at ram_top) reads all ones */
#define C_CHECKIN     24  /* all RSI vCPUs checked in within the bound, with the same RSI */
#define C_LAST        24

        .intel_syntax noprefix
        .code64

        .section .text._start, "ax", @progbits
        .globl _start
        .type _start, @function
_start:
        /* RFLAGS and the "other registers are 0" check, before anything is modified. */
        pushfq
        push    rax
        mov     rax, rbx
        or      rax, rcx
        or      rax, rbp
        or      rax, r8
        or      rax, r9
        or      rax, r10
        or      rax, r11
        or      rax, r12
        or      rax, r13
        or      rax, r14
        or      rax, r15
        or      rax, [rsp]               /* original RAX */
        mov     r12, rdi                 /* vCPU index */
        mov     r13, rsi                 /* N */
        mov     r14, rdx                 /* ram_top */
        lea     r15, [rsp + 16]          /* RSP at entry */
        mov     ebx, C_GPRS
        test    rax, rax
        jnz     fail
        pop     rax
        pop     rax                      /* RFLAGS at entry */
        mov     ebx, C_IF
        test    eax, 0x200
        jnz     fail
        mov     ebx, C_RFLAGS
        cmp     rax, 2
        jne     fail

        /* RDI < RSI, 1 <= RSI <= 255 */
        mov     ebx, C_RDI_RSI
        cmp     r12, r13
        jae     fail
        mov     ebx, C_NCPUS_MAX
        cmp     r13, 255
        ja      fail

        /* ram_top: above our image, at most 4 GiB, room for N stacks above the image */
        mov     ebx, C_RAM_TOP
        mov     rax, 0x100000000
        cmp     r14, rax
        ja      fail
        mov     rax, r13
        shl     rax, 16                  /* N * 64 KiB */
        mov     rcx, r14
        sub     rcx, rax                 /* bottom of the stack area */
        jb      fail
        lea     rax, [rip + __image_end]
        cmp     rcx, rax
        jb      fail

        /* RSP == ram_top - i*64 KiB - 8, (RSP + 8) % 16 == 0 */
        mov     ebx, C_RSP_SLOT
        mov     rax, r12
        shl     rax, 16
        mov     rcx, r14
        sub     rcx, rax
        sub     rcx, 8
        cmp     r15, rcx
        jne     fail
        mov     ebx, C_RSP_ALIGN
        lea     rax, [r15 + 8]
        test    eax, 15
        jnz     fail

        /* segments */
        mov     ebx, C_CS
        mov     ax, cs
        cmp     ax, 0x10
        jne     fail
        mov     ebx, C_SS
        mov     ax, ss
        cmp     ax, 0x18
        jne     fail
        mov     ebx, C_DATA_SEGS
        mov     ax, ds
        cmp     ax, 0x18
        jne     fail
        mov     ax, es
        cmp     ax, 0x18
        jne     fail
        mov     ax, fs
        cmp     ax, 0x18
        jne     fail
        mov     ax, gs
        cmp     ax, 0x18
        jne     fail

        /* control registers and EFER */
        mov     ebx, C_CR0
        mov     rax, cr0
        mov     rcx, 0x80000001          /* PG | PE */
        and     rax, rcx
        cmp     rax, rcx
        jne     fail
        mov     ebx, C_CR4
        mov     rax, cr4
        test    eax, 0x20                /* PAE */
        jz      fail
        mov     ebx, C_EFER
        mov     ecx, 0xc0000080
        rdmsr
        and     eax, 0x500               /* LMA (bit 10) | LME (bit 8) */
        cmp     eax, 0x500
        jne     fail
        mov     ebx, C_CR3
        mov     rax, cr3
        cmp     rax, 0x9000
        jne     fail

        /* descriptor tables: flat GDT at 0x500, no IDT (limit 0) */
        sub     rsp, 16
        sgdt    [rsp]
        mov     rax, [rsp + 2]
        mov     ebx, C_GDT
        cmp     rax, 0x500
        jne     fail
        sidt    [rsp]
        movzx   eax, word ptr [rsp]
        add     rsp, 16
        mov     ebx, C_IDT
        test    eax, eax
        jnz     fail

        /* APIC ID == vCPU index */
        mov     eax, 1
        xor     ecx, ecx
        cpuid
        shr     ebx, 24
        cmp     rbx, r12
        mov     ebx, C_APIC_ID
        jne     fail

        /* the bottom qword of this vCPU's stack slot is writable RAM */
        mov     ebx, C_STACK_SLOT
        mov     rax, r12
        inc     rax
        shl     rax, 16
        mov     rdi, r14
        sub     rdi, rax                 /* ram_top - (i+1)*64 KiB */
        call    check_rw

        /* RAM right below the stack area: one qword per vCPU at ram_top - N*64K - 8*(i+1) */
        mov     ebx, C_BELOW_STACK
        mov     rax, r13
        shl     rax, 16
        mov     rdi, r14
        sub     rdi, rax
        lea     rax, [r12*8 + 8]
        sub     rdi, rax
        call    check_rw

        /* RAM at 1 MiB (payload-owned; below this image) */
        mov     ebx, C_RAM_1MIB
        lea     rdi, [r12*8 + 0x100000]
        call    check_rw

        /* .bss (p_memsz > p_filesz) is zero; nobody ever writes bss_probe */
        mov     ebx, C_BSS
        lea     rsi, [rip + bss_probe]
        mov     ecx, 512
1:      mov     rax, [rsi]
        test    rax, rax
        jnz     fail
        add     rsi, 8
        dec     ecx
        jnz     1b

        /* check in */
        lock inc qword ptr [rip + checked_in]
        lock add qword ptr [rip + ncpus_sum], r13

        test    r12, r12
        jz      cpu0
park:   cli
        hlt
        jmp     park

cpu0:
        /* unassigned MMIO reads return all ones: ram_top is just past RAM (only checked when
           ram_top is well below the 32-bit MMIO hole, where the irqchip lives) */
        mov     rax, 0xc0000000
        cmp     r14, rax
        jae     2f
        mov     ebx, C_MMIO
        mov     rax, [r14]
        cmp     rax, -1
        jne     fail
2:
        /* wait, bounded by the TSC, until N vCPUs have checked in */
        rdtsc
        shl     rdx, 32
        or      rax, rdx
        mov     rbp, WAIT_TSC_CYCLES
        add     rbp, rax                 /* deadline */
3:      mov     rax, [rip + checked_in]
        cmp     rax, r13
        jae     4f
        pause
        rdtsc
        shl     rdx, 32
        or      rax, rdx
        cmp     rax, rbp
        jb      3b
        mov     ebx, C_CHECKIN
        jmp     fail
4:      mov     ebx, C_CHECKIN
        mov     rax, [rip + checked_in]
        cmp     rax, r13
        jne     fail                     /* more vCPUs than RSI says */
        mov     rax, r13
        imul    rax, r13
        cmp     rax, [rip + ncpus_sum]
        jne     fail                     /* some vCPU saw a different RSI */

        call    lock_print
        lea     rsi, [rip + msg_prefix]
        call    puts
        mov     rax, r13
        call    putdec
        lea     rsi, [rip + msg_ok]
        call    puts
        mov     al, EXIT_OK
        out     TEST_EXIT_PORT, al
        jmp     park

/* ebx = failed check number; r12 = vCPU index */
fail:
        call    lock_print
        lea     rsi, [rip + msg_prefix]
        call    puts
        lea     rsi, [rip + msg_fail]
        call    puts
        mov     eax, ebx
        cmp     eax, C_LAST
        jbe     5f
        xor     eax, eax
5:      lea     rsi, [rip + check_names]
        mov     rsi, [rsi + rax*8]
        call    puts
        lea     rsi, [rip + msg_vcpu]
        call    puts
        mov     rax, r12
        call    putdec
        lea     rsi, [rip + msg_close]
        call    puts
        lea     eax, [rbx + 0x10]
        out     TEST_EXIT_PORT, al
        jmp     park

/* write a pattern to [rdi], read it back, restore; jumps to fail (ebx set) on mismatch */
check_rw:
        mov     rcx, [rdi]
        mov     rax, 0x5aa5c33c0ff0e11e
        xor     rax, r12
        mov     [rdi], rax
        cmp     [rdi], rax
        jne     fail
        not     rax
        mov     [rdi], rax
        cmp     [rdi], rax
        jne     fail
        mov     [rdi], rcx
        ret

/* spin until the print lock is ours (never released: whoever prints then ends the VM) */
lock_print:
        mov     eax, 1
        xchg    eax, [rip + print_lock]
        test    eax, eax
        jz      6f
        pause
        jmp     lock_print
6:      ret

/* al = byte; poll LSR bit 5 (THR empty), then write THR */
putc:
        push    rax
        mov     dx, COM1_LSR
7:      in      al, dx
        test    al, 0x20
        jz      7b
        pop     rax
        mov     dx, COM1_THR
        out     dx, al
        ret

/* rsi = NUL-terminated string */
puts:
        mov     al, [rsi]
        test    al, al
        jz      8f
        call    putc
        inc     rsi
        jmp     puts
8:      ret

/* rax = unsigned value, printed in decimal */
putdec:
        mov     rcx, 10
        xor     r8d, r8d                 /* digit count */
9:      xor     edx, edx
        div     rcx
        add     dl, '0'
        push    rdx
        inc     r8d
        test    rax, rax
        jnz     9b
10:     pop     rax
        call    putc
        dec     r8d
        jnz     10b
        ret

        .section .rodata
msg_prefix:     .asciz "contract_check: "
msg_ok:         .asciz " vCPUs OK\n"
msg_fail:       .asciz "FAIL "
msg_vcpu:       .asciz " (vCPU "
msg_close:      .asciz ")\n"
n_unknown:      .asciz "unknown"
n_gprs:         .asciz "gprs-nonzero"
n_if:           .asciz "interrupts-enabled"
n_rflags:       .asciz "rflags"
n_rdi_rsi:      .asciz "rdi-not-below-rsi"
n_ncpus:        .asciz "rsi-range"
n_ram_top:      .asciz "rdx-ram-top"
n_rsp_slot:     .asciz "rsp-slot"
n_rsp_align:    .asciz "rsp-align"
n_cs:           .asciz "cs"
n_ss:           .asciz "ss"
n_dsegs:        .asciz "data-segments"
n_cr0:          .asciz "cr0"
n_cr4:          .asciz "cr4-pae"
n_efer:         .asciz "efer"
n_cr3:          .asciz "cr3"
n_gdt:          .asciz "gdt-base"
n_idt:          .asciz "idt-limit"
n_apic:         .asciz "apic-id"
n_stack:        .asciz "stack-slot-ram"
n_below:        .asciz "ram-below-stacks"
n_1mib:         .asciz "ram-1mib"
n_bss:          .asciz "bss-not-zero"
n_mmio:         .asciz "mmio-not-all-ones"
n_checkin:      .asciz "checkin"

        .balign 8
check_names:
        .quad n_unknown, n_gprs, n_if, n_rflags, n_rdi_rsi, n_ncpus, n_ram_top, n_rsp_slot
        .quad n_rsp_align, n_cs, n_ss, n_dsegs, n_cr0, n_cr4, n_efer, n_cr3, n_gdt, n_idt
        .quad n_apic, n_stack, n_below, n_1mib, n_bss, n_mmio, n_checkin

        .data
        .balign 64
checked_in:     .quad 0
        .balign 64
ncpus_sum:      .quad 0
        .balign 64
print_lock:     .long 0

        .bss
        .balign 64
bss_probe:      .skip 4096

        .section .note.GNU-stack, "", @progbits
