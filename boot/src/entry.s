/* Vellum reset path: 16-bit real mode -> 32-bit protected mode -> 64-bit long mode.
 *
 * Runs in place from the firmware image (ROM under TCG, launch-validated RAM under
 * SEV-SNP). Touches only memory the layout gives it: the boot page tables, the
 * early page (32-bit IDT, SEV_STATUS/C-bit slot) and the boot RAM image/stack, all
 * inside the SNP_SEC_MEM range (pre-validated at launch), plus reads of the SNP
 * CPUID page under SNP. Constants come from boot/src/layout.rs through the
 * global_asm! operands.
 *
 * SEV-SNP: 32-bit code installs a #VC handler (CPUID via the GHCB MSR protocol)
 * before the first CPUID, detects SEV, takes the C-bit and checks it against the
 * CPUID page, and builds page tables with the C-bit on every private mapping.
 * Every failure under SEV-ES/SNP is a GHCB MSR-protocol termination request
 * (reason codes: vellum_boot::snp::msr_protocol::TerminateReason, whose values
 * come in as the term_* operands; the table is docs/snp-termination.md).
 *
 * Register use across the mode switches: ESI:EDI hold the TSC read at reset
 * until the boot stack exists; EBP holds the C-bit mask while the tables are
 * built. */

/* ---------------------------------------------------------------- 16-bit */
.section .rom16, "ax"
.code16
.global rom16_entry
rom16_entry:
    cli
    cld
    rdtsc
    movl %eax, %esi
    movl %edx, %edi
    /* Offsets are relative to the real-mode CS base 0xFFFF0000. */
    lgdtl %cs:(gdt_desc - 0xFFFF0000)
    movl %cr0, %eax
    orl $1, %eax                      /* PE */
    movl %eax, %cr0
    ljmpl $0x08, $rom32_entry

/* Application processors (the SEV info block's reset address; we launch with
 * -smp 1, but the address must be non-zero and is measured into every AP VMSA).
 * An AP that is started anyway parks here. */
.global ap_reset
.balign 16
ap_reset:
    cli
1:  hlt
    jmp 1b

.balign 8
gdt:
    .quad 0                           /* 0x00 null */
    .quad 0x00CF9B000000FFFF          /* 0x08 32-bit code, flat, accessed */
    .quad 0x00CF93000000FFFF          /* 0x10 data, flat, accessed */
    .quad 0x00AF9B000000FFFF          /* 0x18 64-bit code, accessed */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

/* ---------------------------------------------------------------- reset */
.section .reset, "ax"
.code16
.global reset_vector
reset_vector:
    jmp rom16_entry
    .balign 16, 0xf4

/* ---------------------------------------------------------------- 32-bit */
.section .rom32, "ax"
.code32
rom32_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl ${stack_top}, %esp
    pushl %edi                        /* TSC high */
    pushl %esi                        /* TSC low: (%esp) is now the u64 TSC */

    /* Early state: nothing detected yet. With paging off every access is
     * private under SEV (APM vol. 2 §15.34.5), so SEC_MEM is usable as is. */
    xorl %eax, %eax
    movl ${early_page}, %edi
    movl $(4096 / 4), %ecx
    rep stosl

    /* A 32-bit IDT before the first CPUID: under SEV-ES/SNP CPUID raises #VC
     * (vector 29, error code = exit code 0x72), answered below through the
     * GHCB MSR protocol. Every other vector ends in exc32_handler. */
    movl ${idt32}, %edi
    movl ${idt32_gates}, %ecx
    movl $exc32_handler, %eax
1:  call set_gate32
    addl $8, %edi
    loop 1b
    movl $({idt32} + 29 * 8), %edi
    movl $vc32_handler, %eax
    call set_gate32
    lidtl idt32_desc

    /* SEV detection (Oak stage0, Linux sev_enable): CPUID 0x8000_0000 must
     * reach 0x8000_001F and 0x8000_001F EAX bit 1 (SEV) must be set before
     * SEV_STATUS may be read (RDMSR of an unknown MSR #GPs under Intel KVM). */
    xorl %ebp, %ebp                   /* C-bit mask for the high dword: none */
    movl $0x80000000, %eax
    xorl %ecx, %ecx
    cpuid
    cmpl $0x8000001F, %eax
    jb sev_done
    movl $0x8000001F, %eax
    xorl %ecx, %ecx
    cpuid
    testl $(1 << 1), %eax
    jz sev_done
    movl %ebx, %esi                   /* EBX[5:0]: C-bit position (untrusted) */
    movl $0xC0010131, %ecx            /* SEV_STATUS: read-only, never #VC */
    rdmsr
    movl %eax, {early_state}
    movl %edx, {early_state} + 4
    testl $(1 << 0), %eax             /* SEV enabled for this guest? */
    jz sev_done
    testl $(1 << 2), %eax             /* SEV-SNP */
    jz sev_without_snp

    /* C-bit: plausible range first, then it must equal the PSP-filtered CPUID
     * page's leaf 0x8000_001F EBX[5:0] (read directly: paging is off, so the
     * read is private). boot_main checks it again through CpuidPage. */
    andl $0x3F, %esi
    cmpl ${c_bit_min}, %esi
    jb bad_c_bit
    cmpl ${c_bit_max}, %esi
    ja bad_c_bit
    movl {cpuid_page}, %ecx           /* entry count */
    cmpl $64, %ecx
    ja bad_cpuid_page
    movl $({cpuid_page} + 16), %edi
2:  testl %ecx, %ecx
    jz bad_cpuid_page                 /* no 0x8000_001F entry */
    cmpl $0x8000001F, (%edi)
    je 3f
    addl $48, %edi
    decl %ecx
    jmp 2b
3:  movl 28(%edi), %eax               /* entry EBX */
    andl $0x3F, %eax
    cmpl %esi, %eax
    jne bad_c_bit
    movl %esi, {early_state} + 8
    leal -32(%esi), %ecx
    movl $1, %ebp
    shll %cl, %ebp                    /* C-bit in the high dword of an entry */
sev_done:

    /* Identity page tables for [0, 4 GiB): 2 MiB pages, except the first
     * 2 MiB in 4 KiB pages (PT0). Under SNP the C-bit (EBP, high dword) is set
     * in every entry but the leaves of the shared pool and of the MMIO window.
     * boot/src/paging.rs is the model; boot_main checks these tables against it. */
    xorl %eax, %eax
    movl ${pml4}, %edi
    movl $(({pt_end} - {pml4}) / 4), %ecx
    rep stosl
    movl $({pdpt} | 3), {pml4}
    movl %ebp, {pml4} + 4
    movl $({pd0} | 3), %eax
    movl ${pdpt}, %edi
    movl ${pd_count}, %ecx
1:  movl %eax, (%edi)
    movl %ebp, 4(%edi)
    addl $0x1000, %eax
    addl $8, %edi
    loop 1b
    movl $0x83, %eax                  /* present, writable, 2 MiB */
    movl ${pd0}, %edi
    xorl %ecx, %ecx                   /* index across PD0..PD3 */
2:  movl %eax, (%edi)
    cmpl ${mmio_first_pde}, %ecx
    jb 3f
    cmpl ${mmio_end_pde}, %ecx
    jb 4f                             /* MMIO window: no C-bit */
3:  movl %ebp, 4(%edi)
4:  addl $0x200000, %eax
    addl $8, %edi
    incl %ecx
    cmpl $({pd_count} * 512), %ecx
    jb 2b
    movl $({pt0} | 3), {pd0}          /* PD0[0] -> PT0 */
    movl %ebp, {pd0} + 4
    movl $3, %eax                     /* present, writable, 4 KiB */
    movl ${pt0}, %edi
    xorl %ecx, %ecx
5:  movl %eax, (%edi)
    cmpl ${pool_first_pte}, %ecx
    jb 6f
    cmpl ${pool_end_pte}, %ecx
    jb 7f                             /* shared pool: no C-bit */
6:  movl %ebp, 4(%edi)
7:  addl $0x1000, %eax
    addl $8, %edi
    incl %ecx
    cmpl $512, %ecx
    jb 5b

    movl %cr4, %eax
    orl $((1 << 5) | (1 << 9) | (1 << 10)), %eax   /* PAE, OSFXSR, OSXMMEXCPT */
    movl %eax, %cr4
    movl ${pml4}, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx            /* EFER: read-modify-write (keeps SVME under SEV) */
    rdmsr
    orl $(1 << 8), %eax               /* LME */
    wrmsr
    movl %cr0, %eax
    andl $~((1 << 2) | (1 << 29) | (1 << 30)), %eax /* clear EM, NW, CD */
    orl $((1 << 31) | (1 << 1) | 1), %eax          /* PG, MP, PE */
    movl %eax, %cr0
    ljmpl $0x18, $rom64_entry

/* SEV or SEV-ES without SNP: not supported. With SEV-ES the MSR protocol
 * exists and the host learns why; plain SEV has no GHCB: just stop. */
sev_without_snp:
    testl $(1 << 1), %eax
    jz halt32
    movl ${term_snp_unsupported}, %eax
    jmp terminate32
bad_c_bit:
    movl ${term_c_bit}, %eax
    jmp terminate32
bad_cpuid_page:
    movl ${term_cpuid}, %eax
    jmp terminate32

/* Writes the 32-bit interrupt gate for handler EAX at EDI (selector 0x08).
 * Clobbers EDX. */
set_gate32:
    movl %eax, %edx
    andl $0xFFFF, %edx
    orl $(0x08 << 16), %edx
    movl %edx, (%edi)
    movl %eax, %edx
    andl $0xFFFF0000, %edx
    orl $0x8E00, %edx                 /* present, DPL 0, 32-bit interrupt gate */
    movl %edx, 4(%edi)
    ret

/* #VC in 32-bit mode. Frame: error code, EIP, CS, EFLAGS. Only CPUID is
 * expected: error code 0x72 (SVM_EXIT_CPUID), the bytes at EIP 0F A2, and
 * ECX = 0 (the MSR protocol has no sub-leaf; all our 32-bit CPUIDs clear ECX).
 * Each of EAX..EDX is one MSR-protocol exchange (request 0x004 with the leaf in
 * [63:32] and the register in [31:30]; response 0x005 echoing the register,
 * [29:12] zero, value in [63:32]; GHCB spec 56421 §2.3.1). The values are
 * untrusted: only the SEV probe and the C-bit use them, and the C-bit is
 * checked against the CPUID page. Anything else terminates. */
vc32_handler:
    pushl %esi
    pushl %edi
    pushl %ebp
    /* 0 EBP, 4 EDI, 8 ESI, 12 error code, 16 EIP, 20 CS, 24 EFLAGS */
    cmpl $0x72, 12(%esp)
    jne vc32_unexpected
    movl 16(%esp), %esi
    cmpw $0xA20F, (%esi)              /* 0F A2 */
    jne vc32_unexpected
    testl %ecx, %ecx
    jnz vc32_unexpected
    movl %eax, %ebp                   /* leaf */
    movl $1, %esi
    call msr_cpuid32
    pushl %edi                        /* EBX */
    movl $2, %esi
    call msr_cpuid32
    pushl %edi                        /* ECX */
    movl $3, %esi
    call msr_cpuid32
    pushl %edi                        /* EDX */
    xorl %esi, %esi
    call msr_cpuid32
    movl %edi, %eax                   /* EAX */
    popl %edx
    popl %ecx
    popl %ebx
    addl $2, 16(%esp)                 /* skip CPUID */
    popl %ebp
    popl %edi
    popl %esi
    addl $4, %esp                     /* error code */
    iretl

/* One MSR-protocol CPUID exchange: leaf EBP, register ESI (0..3); the value
 * in EDI. Clobbers EAX, ECX, EDX. */
msr_cpuid32:
    movl %esi, %eax
    shll $30, %eax
    orl $0x004, %eax
    movl %ebp, %edx
    movl $0xC0010130, %ecx            /* GHCB MSR */
    wrmsr
    .byte 0xF3, 0x0F, 0x01, 0xD9      /* VMGEXIT (rep vmmcall) */
    rdmsr
    movl %eax, %edi
    andl $0x3FFFFFFF, %edi            /* GHCBInfo and the reserved bits */
    cmpl $0x005, %edi
    jne vc32_bad_response
    shrl $30, %eax
    cmpl %esi, %eax                   /* the register asked for */
    jne vc32_bad_response
    movl %edx, %edi
    ret

vc32_unexpected:
    movl ${term_unexpected_vc}, %eax
    jmp terminate32
vc32_bad_response:
    movl ${term_cpuid_hv}, %eax
    jmp terminate32

/* Any other exception before long mode. Under SEV-ES/SNP (as far as detected)
 * ask the host to terminate; otherwise exit through isa-debug-exit if present,
 * then halt. (Under SNP before detection the OUT itself raises #VC, which
 * terminates too.) */
exc32_handler:
    testl $(1 << 1), {early_state}
    jz 1f
    movl ${term_general}, %eax
    jmp terminate32
1:  movw $0xF4, %dx
    movb $0x11, %al
    outb %al, %dx
halt32:
    cli
2:  hlt
    jmp 2b

/* GHCB MSR protocol termination request EAX (0x100 | set << 12 | code << 16),
 * then halt for good should the host resume us. */
terminate32:
    xorl %edx, %edx
    movl $0xC0010130, %ecx
    wrmsr
    .byte 0xF3, 0x0F, 0x01, 0xD9      /* VMGEXIT */
    jmp halt32

.balign 8
idt32_desc:
    .word {idt32_gates} * 8 - 1
    .long {idt32}
.balign 16
idt64_null:
    .word 0
    .quad 0

/* ---------------------------------------------------------------- 64-bit */
.code64
rom64_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    /* The 32-bit IDT means nothing in long mode: load an empty one, so that a
     * fault before the kernel's IDT is a clean shutdown. */
    lidt idt64_null(%rip)

    /* The Rust code is compiled for SSE4.2/AVX/AES-NI/PCLMULQDQ: check the CPU
     * has them before running any of it. Without SNP: CPUID leaf 1. Under SNP
     * CPUID would raise #VC and there is no 64-bit handler yet, so leaf 1 ECX
     * comes from the PSP-filtered CPUID page instead (the first entry for leaf
     * 1, as CpuidPage::lookup picks it; no entry -> terminate). */
    testl $(1 << 2), {early_state}
    jnz 1f
    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    jmp 3f
1:  movl {cpuid_page}, %edx
    cmpl $64, %edx
    ja snp_no_cpuid64
    movl $({cpuid_page} + 16), %esi
2:  testl %edx, %edx
    jz snp_no_cpuid64
    cmpl $1, (%rsi)
    je 4f
    addl $48, %esi
    decl %edx
    jmp 2b
4:  movl 32(%rsi), %ecx               /* entry ECX */
3:  movl ${required_ecx}, %eax
    andl %eax, %ecx
    cmpl %eax, %ecx
    jne cpu_unsupported

    /* XSAVE-managed state: x87 | SSE | AVX. XSETBV is not intercepted under
     * SEV-ES/SNP (reference §1.5): no #VC. */
    movq %cr4, %rax
    orq $(1 << 18), %rax              /* OSXSAVE */
    movq %rax, %cr4
    xorl %ecx, %ecx
    xorl %edx, %edx
    movl $7, %eax
    xsetbv

    /* Copy the Rust image from ROM to RAM and clear .bss. */
    movabsq $_ram_image_lma, %rsi
    movabsq $_ram_image_start, %rdi
    movabsq $_ram_image_end, %rcx
    subq %rdi, %rcx
    rep movsb
    movabsq $_bss_start, %rdi
    movabsq $_bss_end, %rcx
    subq %rdi, %rcx
    xorl %eax, %eax
    rep stosb

    movq (%rsp), %rdi                 /* arg0: TSC at reset */
    movq {early_state}, %rsi          /* arg1: SEV_STATUS (0 without SEV) */
    movq {early_state} + 8, %rdx      /* arg2: C-bit position (0 without SNP) */
    movq ${stack_top}, %rsp           /* 16-byte aligned; the call pushes 8 */
    xorl %ebp, %ebp
    movabsq $boot_main, %rax
    call *%rax
3:  hlt
    jmp 3b

snp_no_cpuid64:
    movl ${term_cpuid}, %eax
    jmp terminate64

cpu_unsupported:
    testl $(1 << 2), {early_state}    /* SNP: no port I/O without a GHCB */
    jz 7f
    movl ${term_cpuid}, %eax
terminate64:
    xorl %edx, %edx
    movl $0xC0010130, %ecx
    wrmsr
    .byte 0xF3, 0x0F, 0x01, 0xD9      /* VMGEXIT */
8:  cli
    hlt
    jmp 8b
7:  movabsq $cpu_msg, %rsi
4:  movb (%rsi), %al
    testb %al, %al
    jz 5f
    movw $0x3F8, %dx
    outb %al, %dx
    incq %rsi
    jmp 4b
5:  movw $0xF4, %dx                   /* isa-debug-exit, if present: QEMU exits 35 */
    movb $0x11, %al
    outb %al, %dx
6:  hlt
    jmp 6b

cpu_msg:
    .ascii "vellum-boot: this CPU lacks SSE4.2/POPCNT/AVX/XSAVE/AES-NI/PCLMULQDQ, "
    .asciz "which Vellum is compiled for; run QEMU with -cpu max (TCG) or an EPYC model\r\n"
