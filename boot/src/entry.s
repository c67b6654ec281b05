/* Vellum reset path: 16-bit real mode -> 32-bit protected mode -> 64-bit long mode.
 *
 * Runs in place from the firmware image (ROM under TCG, launch-validated RAM under
 * SEV-SNP). Touches only memory the layout gives it: the boot page tables and the
 * boot RAM image/stack, all inside the SNP_SEC_MEM range (pre-validated at launch).
 * Constants come from boot/src/layout.rs through the global_asm! operands.
 *
 * Register use across the mode switches: ESI:EDI hold the TSC read at reset
 * until the boot stack exists. */

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

    /* Identity page tables for [0, 4 GiB) with 2 MiB pages. */
    xorl %eax, %eax
    movl ${pml4}, %edi
    movl $(({pt_end} - {pml4}) / 4), %ecx
    rep stosl
    movl $({pdpt} | 3), {pml4}
    movl $({pd0} | 3), %eax
    movl ${pdpt}, %edi
    movl ${pd_count}, %ecx
1:  movl %eax, (%edi)
    addl $0x1000, %eax
    addl $8, %edi
    loop 1b
    movl $0x83, %eax                  /* present, writable, 2 MiB */
    movl ${pd0}, %edi
    movl $({pd_count} * 512), %ecx
2:  movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 2b

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

/* ---------------------------------------------------------------- 64-bit */
.code64
rom64_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss

    /* The Rust code is compiled for SSE4.2/AVX/AES-NI/PCLMULQDQ: check the CPU
     * has them before running any of it, and say so on COM1 if not. */
    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    movl ${required_ecx}, %eax
    andl %eax, %ecx
    cmpl %eax, %ecx
    jne cpu_unsupported

    /* XSAVE-managed state: x87 | SSE | AVX. */
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
    movq ${stack_top}, %rsp           /* 16-byte aligned; the call pushes 8 */
    xorl %ebp, %ebp
    movabsq $boot_main, %rax
    call *%rax
3:  hlt
    jmp 3b

cpu_unsupported:
    movabsq $cpu_msg, %rsi
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
