/*
 * Vellum emulated SEV-SNP platform: the QEMU side.
 *
 * What an SEV-SNP guest sees, emulated under TCG for Vellum's tests:
 *  - CPUID 0x8000001F (QEMU's own leaf, from cbitpos/reduced-phys-bits),
 *    SEV_STATUS (MSR 0xC0010131) and the guest-owned GHCB MSR (0xC0010130);
 *  - #VC (vector 29, error code = SVM exit code) for CPUID, port I/O,
 *    intercepted MSRs, MMIO and private accesses to unvalidated pages;
 *  - VMGEXIT: the GHCB MSR protocol and the GHCB page protocol;
 *  - PVALIDATE and RMPADJUST against an RMP model (one byte per 4 KiB page);
 *  - a page walk that strips the C-bit and checks every access against the
 *    RMP (a C-bit that disagrees with the page's owner, an instruction fetch
 *    from a shared page and a device DMA into a private page are fatal);
 *  - the launch: BIOS and ASEV metadata pages measured and validated,
 *    secrets and CPUID pages filled, one VMSA per vCPU, the ID block checked,
 *    guest requests answered by an emulated AMD-SP (snp-emu-pure.h);
 *  - fault injection (`fault=NAME[@N]`): a host that lies in one way.
 *
 * Sources for every number: docs/snp-platform.md in the Vellum repository
 * (AMD APM vol. 2 24593 ch. 15.34-15.36, GHCB spec 56421, SNP firmware ABI
 * 56860). This file is part of a patch to QEMU and shares its licence.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "qapi/error.h"
#include "cpu.h"
#include "exec/helper-proto.h"
#include "exec/cputlb.h"
#include "exec/cpu_ldst.h"
#include "exec/address-spaces.h"
#include "exec/memory.h"
#include "system/dma.h"
#include "system/runstate.h"
#include "system/tcg.h"
#include "system/confidential-guest-support.h"
#include "hw/i386/pc.h"
#include "hw/boards.h"
#include "hw/core/cpu.h"
#include "tcg/helper-tcg.h"
#include "sev.h"
#include "snp-emu.h"
#include "snp-emu-pure.h"

bool snp_emu_on;
uint64_t snp_emu_cmask;

/* Exit statuses of the emulated platform (snp-platform/README.md). */
#define SNP_EXIT_TERMINATE 86   /* the guest asked to terminate */
#define SNP_EXIT_VIOLATION 87   /* the guest broke the platform's rules */

/* RMP model: one byte per 4 KiB page below 4 GiB. */
#define RMP_ASSIGNED  0x01      /* guest-owned (private) */
#define RMP_VALIDATED 0x02      /* PVALIDATEd (or validated at launch) */
#define RMP_2M        0x04      /* part of a 2 MiB RMP entry */
#define RMP_VMSA      0x08      /* RMPADJUST made it a VMSA page */
#define RMP_PAGES     (1u << 20)

/* GHCB page layout (GHCB spec 56421 table 3). */
#define GHCB_RAX          0x1f8
#define GHCB_RCX          0x308
#define GHCB_RDX          0x310
#define GHCB_RBX          0x318
#define GHCB_EXIT_CODE    0x390
#define GHCB_EXIT_INFO1   0x398
#define GHCB_EXIT_INFO2   0x3a0
#define GHCB_SCRATCH      0x3a8
#define GHCB_XCR0         0x3e8
#define GHCB_VALID        0x3f0
#define GHCB_SHARED_BUF   0x800
#define GHCB_SHARED_END   0xff0
#define GHCB_VERSION      0xffa
#define GHCB_USAGE        0xffc

/* GHCB errors in SW_EXITINFO2 when SW_EXITINFO1 = 2 (Linux sev-common.h). */
#define GHCB_ERR_NOT_REGISTERED 1
#define GHCB_ERR_INVALID_USAGE  2
#define GHCB_ERR_INVALID_SCRATCH 3
#define GHCB_ERR_MISSING_INPUT  4
#define GHCB_ERR_INVALID_INPUT  5
#define GHCB_ERR_INVALID_EVENT  6

/* NAE exit codes (Linux uapi/asm/svm.h, GHCB spec table 6). */
#define NAE_CPUID        0x72
#define NAE_IOIO         0x7b
#define NAE_MSR          0x7c
#define NAE_MMIO_READ    0x80000001ULL
#define NAE_MMIO_WRITE   0x80000002ULL
#define NAE_AP_JUMP      0x80000005ULL
#define NAE_PSC          0x80000010ULL
#define NAE_GUEST_REQ    0x80000011ULL
#define NAE_EXT_GUEST_REQ 0x80000012ULL
#define NAE_AP_CREATE    0x80000013ULL
#define NAE_HV_FEATURES  0x8000fffdULL
#define NAE_TERMINATE    0x8000fffeULL

#define SVM_EXIT_NPF_VC  0x400  /* MMIO (#VC on a reserved-bit NPF) */
#define VC_PAGE_NOT_VALIDATED 0x404

/* Hypervisor features we offer (GHCB spec 56421 2.3.1): SNP only. */
#define HV_FEATURES      0x1ULL

enum SnpFault {
    FAULT_NONE,
    FAULT_CPUID_LIE,        /* a CPUID answer that differs from the CPUID page */
    FAULT_IOIO_ERROR,       /* a GHCB error on IOIO */
    FAULT_PSC_NOOP,         /* a PSC that reports success but changed nothing */
    FAULT_PAGE_SHARED,      /* a page turned shared behind the guest's back
                             * (after the N-th guest request's VMGEXIT) */
    FAULT_SPURIOUS_VC,      /* a #VC with an unexpected exit code (likewise) */
    FAULT_REQ_REPLAY,       /* a replayed guest-request response */
    FAULT_REQ_ALTER,        /* an altered guest-request response */
    FAULT_REPORT_DATA,      /* a report carrying other REPORT_DATA */
    FAULT_BUSY_FOREVER,     /* endless BUSY on guest requests */
    FAULT_VMPL1,            /* the guest runs at VMPL1 (RMPADJUST says so) */
    FAULT_RMP_4K,           /* the host makes 4 KiB RMP entries only (legal) */
    FAULT_ALIAS,            /* a GPA turned private maps an already validated page */
};

static const struct {
    const char *name;
    enum SnpFault fault;
    uint64_t default_after;  /* events of its kind before the lie */
} snp_faults[] = {
    { "cpuid-lie", FAULT_CPUID_LIE, 0 },
    { "ioio-error", FAULT_IOIO_ERROR, 0 },
    { "psc-noop", FAULT_PSC_NOOP, 1 },   /* 0: the GHCB page, already shared */
    { "page-shared", FAULT_PAGE_SHARED, 0 },
    { "spurious-vc", FAULT_SPURIOUS_VC, 0 },
    { "guest-req-replay", FAULT_REQ_REPLAY, 0 },  /* counts requests after the first */
    { "guest-req-alter", FAULT_REQ_ALTER, 0 },
    { "report-data", FAULT_REPORT_DATA, 0 },
    { "busy-forever", FAULT_BUSY_FOREVER, 0 },
    { "vmpl1", FAULT_VMPL1, 0 },
    { "rmp-4k", FAULT_RMP_4K, 0 },
    { "alias", FAULT_ALIAS, 0 },
};

#define SNP_MAX_VCPUS 64
#define SNP_MAX_LAUNCH 8
#ifndef SNP_PSC_PAGES_PER_EXIT
#define SNP_PSC_PAGES_PER_EXIT 256
#endif

static struct {
    SnpEmuConfig cfg;
    uint8_t *rmp;
    uint8_t *ramtype;
    QemuMutex lock;             /* RMP updates and guest requests */
    struct {
        hwaddr gpa;
        uint64_t len;
    } launch[SNP_MAX_LAUNCH];
    int nlaunch;
    bool launched;
    uint64_t ghcb_gpa[SNP_MAX_VCPUS];
    SnpChip *chip;
    SnpGuestInfo guest;
    SnpAttestFaults afaults;
    enum SnpFault fault;
    uint64_t fault_after;       /* events before the lie */
    uint64_t fault_events;
    bool fault_done;
    uint8_t last_resp[SNP_PAGE_SIZE];
    bool have_last_resp;
    bool page_shared_pending;   /* after this VMGEXIT */
    bool spurious_vc_pending;   /* after this VMGEXIT */
    uint64_t pages_validated_at_launch;
    struct {
        uint64_t vmgexit, msr_proto, ioio, msr, cpuid, mmio, psc, guest_req;
        uint64_t other, vc, pvalidate;
    } stat;
} snp;

static __thread int snp_hv_msr;   /* inside the hypervisor's MSR emulation */

/* ---------------------------------------------------------------- helpers */

static uint64_t snp_sev_status(void)
{
    /* SEV_STATUS: bit 0 SEV, bit 1 SEV-ES, bits 2.. = SEV_FEATURES (bit 2
     * SNPActive); APM vol. 2 15.34.10 */
    return 0x3 | (snp.cfg.sev_features << 2);
}

static G_NORETURN void snp_fatal(CPUX86State *env, uintptr_t ra, int status,
                                 const char *fmt, ...) G_GNUC_PRINTF(4, 5);

static void snp_print_stats(void)
{
    fprintf(stderr,
            "snp-emu: exits: vmgexit %" PRIu64 " (msr-protocol %" PRIu64
            ", ioio %" PRIu64 ", msr %" PRIu64 ", cpuid %" PRIu64
            ", mmio %" PRIu64 ", psc %" PRIu64 ", guest-request %" PRIu64
            ", other %" PRIu64 "), #VC %" PRIu64 ", pvalidate %" PRIu64 "\n",
            snp.stat.vmgexit, snp.stat.msr_proto, snp.stat.ioio, snp.stat.msr,
            snp.stat.cpuid, snp.stat.mmio, snp.stat.psc, snp.stat.guest_req,
            snp.stat.other, snp.stat.vc, snp.stat.pvalidate);
}

static void snp_fatal(CPUX86State *env, uintptr_t ra, int status,
                      const char *fmt, ...)
{
    va_list ap;

    if (env && ra) {
        cpu_restore_state(env_cpu(env), ra);
    }
    fprintf(stderr, "snp-emu: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (env) {
        fprintf(stderr, " (vCPU %d, RIP 0x%" PRIx64 ")",
                env_cpu(env)->cpu_index, (uint64_t)(env->eip + env->segs[R_CS].base));
    }
    fprintf(stderr, "\n");
    fflush(stderr);
    exit(status);
}

static G_NORETURN void snp_violation(CPUX86State *env, uintptr_t ra,
                                     const char *what, hwaddr gpa, vaddr va)
{
    snp_fatal(env, ra, SNP_EXIT_VIOLATION,
              "RMP violation: %s at GPA 0x%" HWADDR_PRIx " (VA 0x%" VADDR_PRIx ")",
              what, gpa, va);
}

static uint8_t *snp_rmp_entry(hwaddr gpa)
{
    return gpa < (hwaddr)RMP_PAGES << 12 ? &snp.rmp[gpa >> 12] : NULL;
}

/* Whether a GPA below 4 GiB is RAM (cached per page: 1 RAM, 2 not). */
static bool snp_gpa_is_ram(hwaddr gpa)
{
    MemoryRegion *mr;
    hwaddr xlat, len = 1;
    uint8_t *c = gpa < (hwaddr)RMP_PAGES << 12 ? &snp.ramtype[gpa >> 12] : NULL;
    bool ram;

    if (c && qatomic_read(c)) {
        return qatomic_read(c) == 1;
    }
    RCU_READ_LOCK_GUARD();
    mr = address_space_translate(&address_space_memory, gpa & ~0xfffULL,
                                 &xlat, &len, false, MEMTXATTRS_UNSPECIFIED);
    ram = memory_region_is_ram(mr) && !memory_region_is_ram_device(mr);
    if (c) {
        qatomic_set(c, ram ? 1 : 2);
    }
    return ram;
}

static void snp_flush_all_tlbs(void)
{
    CPUState *cs;

    CPU_FOREACH(cs) {
        tlb_flush(cs);
    }
}

/* Is the next event of the configured fault's kind the one to lie on? */
static bool snp_fault_fires(enum SnpFault kind)
{
    if (snp.fault != kind || snp.fault_done) {
        return false;
    }
    if (snp.fault_events++ < snp.fault_after) {
        return false;
    }
    return true;
}

static void snp_fault_logged(const char *what)
{
    if (!snp.fault_done) {
        fprintf(stderr, "snp-emu: fault injected: %s\n", what);
    }
}

void snp_emu_shutdown(CPUX86State *env, const char *why)
{
    snp_fatal(env, 0, SNP_EXIT_VIOLATION, "guest shut down: %s", why);
}

/* ---------------------------------------------------------------- #VC, MSR */

void snp_emu_raise_vc(CPUX86State *env, uint32_t exit_code, uintptr_t ra)
{
    qatomic_inc(&snp.stat.vc);
    raise_exception_err_ra(env, EXCP1D_VC, exit_code, ra);
}

bool snp_emu_msr(CPUX86State *env, bool write, uintptr_t ra)
{
    uint32_t msr = (uint32_t)env->regs[R_ECX];
    uint64_t val = (uint32_t)env->regs[R_EAX] |
                   ((uint64_t)(uint32_t)env->regs[R_EDX] << 32);

    if (snp_hv_msr) {
        return false;
    }
    switch (msr) {
    case 0xc0010130: /* GHCB MSR: the guest's own */
        if (write) {
            env->snp_ghcb_msr = val;
        } else {
            env->regs[R_EAX] = (uint32_t)env->snp_ghcb_msr;
            env->regs[R_EDX] = (uint32_t)(env->snp_ghcb_msr >> 32);
        }
        return true;
    case 0xc0010131: /* SEV_STATUS: read-only, never intercepted */
        if (write) {
            raise_exception_err_ra(env, EXCP0D_GPF, 0, ra);
        }
        env->regs[R_EAX] = (uint32_t)snp_sev_status();
        env->regs[R_EDX] = (uint32_t)(snp_sev_status() >> 32);
        return true;
    /*
     * MSRs KVM lets an SEV-ES guest access directly (the VMSA holds them):
     * EFER, PAT, the SYSCALL/SYSENTER MSRs, FS/GS/KernelGS base, TSC_AUX,
     * SPEC_CTRL/PRED_CMD. Everything else is a #VC 0x7C.
     */
    case 0xc0000080: case 0x277:
    case 0xc0000081: case 0xc0000082: case 0xc0000083: case 0xc0000084:
    case 0xc0000100: case 0xc0000101: case 0xc0000102: case 0xc0000103:
    case 0x174: case 0x175: case 0x176:
    case 0x48: case 0x49:
        return false;
    default:
        snp_emu_raise_vc(env, NAE_MSR, ra);
    }
}

/* ---------------------------------------------------------------- RMP check */

bool snp_emu_tlb_check(CPUX86State *env, vaddr addr, hwaddr paddr, bool enc,
                       MMUAccessType type, int *prot, bool probe,
                       uintptr_t ra)
{
    uint8_t *e = snp_rmp_entry(paddr);
    uint8_t r;

    if (!snp.launched) {
        return true;
    }
    if (!e) {
        /* above 4 GiB: no RAM is modelled there (use -m 2G or less) */
        snp_violation(env, ra, "access above 4 GiB (not modelled)", paddr, addr);
    }
    if (!snp_gpa_is_ram(paddr)) {
        /* MMIO: emulated by the host, so it must be mapped shared */
        if (enc) {
            snp_violation(env, ra, "private (C-bit set) access to MMIO",
                          paddr, addr);
        }
        if (probe) {
            return false;
        }
        /* never cached in the TLB: every access is a #VC */
        snp_emu_raise_vc(env, SVM_EXIT_NPF_VC, ra);
    }
    r = qatomic_read(e);
    if (enc) {
        if (!(r & RMP_ASSIGNED)) {
            snp_violation(env, ra,
                          "private (C-bit set) access to a hypervisor-owned page",
                          paddr, addr);
        }
        if (!(r & RMP_VALIDATED)) {
            if (probe) {
                return false;
            }
            snp_emu_raise_vc(env, VC_PAGE_NOT_VALIDATED, ra);
        }
        if (r & RMP_VMSA) {
            snp_violation(env, ra, "access to a VMSA page", paddr, addr);
        }
    } else {
        if (type == MMU_INST_FETCH) {
            snp_violation(env, ra, "instruction fetch from a shared page",
                          paddr, addr);
        }
        if (r & RMP_ASSIGNED) {
            snp_violation(env, ra,
                          "shared (C-bit clear) access to a guest-owned page",
                          paddr, addr);
        }
        /* a later fetch must come back here */
        *prot &= ~PAGE_EXEC;
    }
    return true;
}

/* Device DMA (virtio rings and buffers, fw_cfg DMA): shared pages only. */
static void snp_dma_check(hwaddr addr, hwaddr len, bool is_write)
{
    hwaddr p;

    if (!snp.launched || len == 0) {
        return;
    }
    for (p = addr & ~0xfffULL; p < addr + len; p += 0x1000) {
        uint8_t *e = snp_rmp_entry(p);

        if (e && (qatomic_read(e) & RMP_ASSIGNED)) {
            snp_fatal(NULL, 0, SNP_EXIT_VIOLATION,
                      "RMP violation: device DMA %s a private page at GPA 0x%"
                      HWADDR_PRIx " (DMA 0x%" HWADDR_PRIx "+0x%" HWADDR_PRIx ")",
                      is_write ? "into" : "from", p, addr, len);
        }
    }
}

/* ---------------------------------------------------------------- PVALIDATE */

static void snp_set_result_flags(CPUX86State *env, bool cf)
{
    /* PVALIDATE/RMPADJUST: CF as stated, ZF/PF/AF/SF/OF cleared */
    uint32_t fl = cpu_cc_compute_all(env);

    fl &= ~(CC_C | CC_Z | CC_P | CC_A | CC_S | CC_O);
    env->cc_src = fl | (cf ? CC_C : 0);
    env->cc_op = CC_OP_EFLAGS;
}

#define PVALIDATE_FAIL_INPUT 1
#define PVALIDATE_FAIL_SIZEMISMATCH 6
#define RMPADJUST_FAIL_PERMISSION 2

void helper_snp_pvalidate(CPUX86State *env)
{
    vaddr va = env->regs[R_EAX];
    uint32_t size = (uint32_t)env->regs[R_ECX];
    bool validate = (uint32_t)env->regs[R_EDX] & 1;
    uint64_t npages = size ? 512 : 1;
    hwaddr gpa;
    bool enc, changed = false;
    uint32_t rc = 0;
    uint64_t i;

    qatomic_inc(&snp.stat.pvalidate);
    if (size > 1 || (va & (npages * 0x1000 - 1))) {
        env->regs[R_EAX] = PVALIDATE_FAIL_INPUT;
        snp_set_result_flags(env, false);
        return;
    }
    gpa = snp_emu_translate(env, va, &enc, GETPC()) & ~(npages * 0x1000 - 1);
    if (!snp_rmp_entry(gpa + npages * 0x1000 - 1)) {
        snp_violation(env, GETPC(), "PVALIDATE above 4 GiB", gpa, va);
    }
    qemu_mutex_lock(&snp.lock);
    for (i = 0; i < npages; i++) {
        uint8_t r = snp.rmp[(gpa >> 12) + i];

        if (!(r & RMP_ASSIGNED)) {
            qemu_mutex_unlock(&snp.lock);
            /* the hardware raises an RMP #NPF: the host cannot fix it */
            snp_violation(env, GETPC(), "PVALIDATE of a hypervisor-owned page",
                          gpa + i * 0x1000, va);
        }
        if (size && !(r & RMP_2M)) {
            rc = PVALIDATE_FAIL_SIZEMISMATCH;
        }
    }
    if (!rc) {
        if (!size && (snp.rmp[gpa >> 12] & RMP_2M)) {
            /* a 4 KiB PVALIDATE inside a 2 MiB RMP entry: the host PSMASHes
             * the entry (as KVM does on the resulting #NPF) and it goes on */
            hwaddr base = (gpa >> 12) & ~511ULL;

            for (i = 0; i < 512; i++) {
                snp.rmp[base + i] &= ~RMP_2M;
            }
        }
        for (i = 0; i < npages; i++) {
            uint8_t *e = &snp.rmp[(gpa >> 12) + i];
            bool now = *e & RMP_VALIDATED;

            if (now != validate) {
                changed = true;
                *e = validate ? (*e | RMP_VALIDATED) : (*e & ~RMP_VALIDATED);
            }
        }
    }
    qemu_mutex_unlock(&snp.lock);
    if (changed && !validate) {
        snp_flush_all_tlbs();
    }
    env->regs[R_EAX] = rc;
    snp_set_result_flags(env, rc == 0 && !changed);
}

void helper_snp_rmpadjust(CPUX86State *env)
{
    vaddr va = env->regs[R_EAX];
    uint32_t size = (uint32_t)env->regs[R_ECX];
    uint64_t attrs = env->regs[R_EDX];
    uint32_t target_vmpl = attrs & 0xff;
    bool vmsa = attrs & (1 << 16);
    hwaddr gpa;
    bool enc;
    uint8_t *e;
    uint32_t rc = 0;

    if (size > 1 || (va & ((size ? 0x200000 : 0x1000) - 1)) || target_vmpl > 3) {
        rc = PVALIDATE_FAIL_INPUT;
    } else if (target_vmpl <= (snp.fault == FAULT_VMPL1 ? 1 : 0)) {
        /* only less privileged VMPLs than the guest's own may be adjusted */
        rc = RMPADJUST_FAIL_PERMISSION;
    } else {
        gpa = snp_emu_translate(env, va, &enc, GETPC());
        e = snp_rmp_entry(gpa);
        if (!e || (*e & (RMP_ASSIGNED | RMP_VALIDATED)) !=
                  (RMP_ASSIGNED | RMP_VALIDATED)) {
            rc = PVALIDATE_FAIL_INPUT;
        } else if (size && !(*e & RMP_2M)) {
            rc = PVALIDATE_FAIL_SIZEMISMATCH;
        } else if (vmsa) {
            qemu_mutex_lock(&snp.lock);
            *e |= RMP_VMSA;
            qemu_mutex_unlock(&snp.lock);
            snp_flush_all_tlbs();
        }
    }
    env->regs[R_EAX] = rc;
    snp_set_result_flags(env, false);
}

/* ---------------------------------------------------------------- page state */

/*
 * One page state change by the host: RMPUPDATE to guest-owned (op 1) or to
 * hypervisor-owned (op 2). Either way the page is no longer validated.
 */
static void snp_rmp_update(hwaddr gpa, int op, bool huge)
{
    uint8_t *e = &snp.rmp[gpa >> 12];

    if (op == 1) {
        *e = RMP_ASSIGNED | (huge ? RMP_2M : 0);
    } else {
        *e = 0;
    }
}

/* MSR-protocol PSC (GHCB spec 2.3.1): one 4 KiB page. */
static uint32_t snp_psc_msr(hwaddr gpa, int op)
{
    if ((op != 1 && op != 2) || !snp_rmp_entry(gpa) || !snp_gpa_is_ram(gpa)) {
        return 1;
    }
    if (snp_fault_fires(FAULT_PSC_NOOP)) {
        snp_fault_logged("PSC reported done, RMP unchanged");
        snp.fault_done = true;
        return 0;
    }
    qemu_mutex_lock(&snp.lock);
    snp_rmp_update(gpa, op, false);
    qemu_mutex_unlock(&snp.lock);
    snp_flush_all_tlbs();
    return 0;
}

/*
 * GHCB PSC (GHCB spec 4.1.6): entries [cur_entry, end_entry]; each entry
 * [11:0] cur_page, [51:12] GFN, [55:52] op, [56] 2 MiB. To exercise the
 * guest's resume loop this host does at most 4 entries and 256 pages of a
 * 2 MiB entry per exit, leaving cur_entry/cur_page where it stopped.
 */
static uint64_t snp_psc_ghcb(uint8_t *buf, uint32_t len)
{
    uint16_t cur = lduw_le_p(buf), end = lduw_le_p(buf + 2);
    int entries_left = 4;
    uint64_t noop = snp_fault_fires(FAULT_PSC_NOOP);

    if (len < 8 || end >= (len - 8) / 8 || end > 252) {
        return 1;          /* invalid header */
    }
    if (noop) {
        snp_fault_logged("PSC reported done, RMP unchanged");
        snp.fault_done = true;
        stw_le_p(buf, end + 1);
        return 0;
    }
    qemu_mutex_lock(&snp.lock);
    while (cur <= end && entries_left-- > 0) {
        uint64_t ent = ldq_le_p(buf + 8 + cur * 8);
        uint32_t cur_page = ent & 0xfff;
        hwaddr gpa = (ent & 0x000ffffffffff000ULL);
        int op = (ent >> 52) & 0xf;
        bool huge = (ent >> 56) & 1;
        uint32_t npages = huge ? 512 : 1, done = 0;

        if ((op != 1 && op != 2) || cur_page > npages ||
            (huge && (gpa & 0x1fffff)) ||
            !snp_rmp_entry(gpa + npages * 0x1000 - 1) || !snp_gpa_is_ram(gpa)) {
            qemu_mutex_unlock(&snp.lock);
            stw_le_p(buf, cur);
            return 2;      /* invalid entry */
        }
        while (cur_page < npages && done < SNP_PSC_PAGES_PER_EXIT) {
            hwaddr page = gpa + cur_page * 0x1000ULL;

            /* the host chooses the RMP page size: the 2 MiB flag is a hint */
            snp_rmp_update(page, op, huge && snp.fault != FAULT_RMP_4K);
            if (op == 1 && snp_fault_fires(FAULT_ALIAS)) {
                /* as if the host had mapped a page the guest validated
                 * before at this GPA: PVALIDATE will find it validated */
                snp.rmp[page >> 12] |= RMP_VALIDATED;
                snp.fault_done = true;
                fprintf(stderr, "snp-emu: fault injected: GPA 0x%" HWADDR_PRIx
                        " made private with an already validated page\n", page);
            }
            cur_page++;
            done++;
        }
        ent = (ent & ~0xfffULL) | cur_page;
        stq_le_p(buf + 8 + cur * 8, ent);
        if (cur_page < npages) {
            break;         /* partial progress inside a 2 MiB entry */
        }
        cur++;
    }
    qemu_mutex_unlock(&snp.lock);
    stw_le_p(buf, cur);
    snp_flush_all_tlbs();
    return 0;
}

/* ---------------------------------------------------------------- CPUID */

static void snp_host_cpuid(CPUX86State *env, uint32_t leaf, uint32_t sub,
                           uint32_t r[4])
{
    cpu_x86_cpuid(env, leaf, sub, &r[0], &r[1], &r[2], &r[3]);
    if (leaf == 0x8000001f && snp_fault_fires(FAULT_CPUID_LIE)) {
        /* another C-bit than the CPUID page says */
        r[1] = (r[1] & ~0x3fu) | ((r[1] & 0x3f) == 51 ? 47 : 51);
        snp_fault_logged("CPUID 0x8000001F EBX differs from the CPUID page");
        snp.fault_done = true;
    }
}

/* The CPUID page (SNP firmware ABI, SNP_LAUNCH_UPDATE type CPUID). */
static void snp_fill_cpuid_page(CPUX86State *env, uint8_t *page)
{
    uint32_t count = 0, r[4], max, leaf, sub;
    uint32_t xmax;

    memset(page, 0, SNP_PAGE_SIZE);
#define ADD(l, s) do {                                                    \
        if (count < 64) {                                                 \
            uint8_t *e_ = page + 16 + count * 48;                         \
            cpu_x86_cpuid(env, (l), (s), &r[0], &r[1], &r[2], &r[3]);     \
            stl_le_p(e_, (l));                                            \
            stl_le_p(e_ + 4, (s));                                        \
            stq_le_p(e_ + 8, (l) == 0xd ? 1 : 0);  /* XCR0_IN */          \
            stl_le_p(e_ + 24, r[0]);                                      \
            stl_le_p(e_ + 28, r[1]);                                      \
            stl_le_p(e_ + 32, r[2]);                                      \
            stl_le_p(e_ + 36, r[3]);                                      \
            count++;                                                      \
        }                                                                 \
    } while (0)

    cpu_x86_cpuid(env, 0, 0, &r[0], &r[1], &r[2], &r[3]);
    max = MIN(r[0], 0x1f);
    for (leaf = 0; leaf <= max; leaf++) {
        switch (leaf) {
        case 4: case 0xb: case 0x1f: case 0x8000001d:
            for (sub = 0; sub < 8; sub++) {
                cpu_x86_cpuid(env, leaf, sub, &r[0], &r[1], &r[2], &r[3]);
                ADD(leaf, sub);
                if (leaf == 4 ? !(r[0] & 0x1f) : !(r[2] & 0xff00)) {
                    break;
                }
            }
            break;
        case 7:
            cpu_x86_cpuid(env, 7, 0, &r[0], &r[1], &r[2], &r[3]);
            xmax = MIN(r[0], 2);
            for (sub = 0; sub <= xmax; sub++) {
                ADD(7, sub);
            }
            break;
        case 0xd:
            ADD(0xd, 0);
            ADD(0xd, 1);
            for (sub = 2; sub < 10; sub++) {
                cpu_x86_cpuid(env, 0xd, sub, &r[0], &r[1], &r[2], &r[3]);
                if (r[0]) {
                    ADD(0xd, sub);
                }
            }
            break;
        default:
            ADD(leaf, 0);
        }
    }
    cpu_x86_cpuid(env, 0x80000000, 0, &r[0], &r[1], &r[2], &r[3]);
    xmax = MIN(r[0], 0x80000021);
    for (leaf = 0x80000000; leaf <= xmax; leaf++) {
        ADD(leaf, 0);
    }
#undef ADD
    stl_le_p(page, count);
}

/* ---------------------------------------------------------------- GHCB */

typedef struct GhcbCall {
    uint8_t page[SNP_PAGE_SIZE];
    uint8_t valid_in[16];
} GhcbCall;

static bool ghcb_is_valid(GhcbCall *g, uint32_t off)
{
    uint32_t bit = off / 8;

    return g->valid_in[bit / 8] & (1 << (bit % 8));
}

static uint64_t ghcb_get(GhcbCall *g, uint32_t off)
{
    return ldq_le_p(g->page + off);
}

static void ghcb_set(GhcbCall *g, uint32_t off, uint64_t v)
{
    uint32_t bit = off / 8;

    stq_le_p(g->page + off, v);
    g->page[GHCB_VALID + bit / 8] |= 1 << (bit % 8);
}

static void ghcb_error(GhcbCall *g, uint64_t err)
{
    ghcb_set(g, GHCB_EXIT_INFO1, 2);
    ghcb_set(g, GHCB_EXIT_INFO2, err);
}

/* The host reads guest memory only where it may: shared pages. */
static bool snp_host_can_access(hwaddr gpa, uint64_t len)
{
    hwaddr p;

    for (p = gpa & ~0xfffULL; p < gpa + len; p += 0x1000) {
        uint8_t *e = snp_rmp_entry(p);

        if (!e || (qatomic_read(e) & RMP_ASSIGNED)) {
            return false;
        }
    }
    return true;
}

static void snp_ioio(CPUX86State *env, GhcbCall *g)
{
    uint64_t info1 = ghcb_get(g, GHCB_EXIT_INFO1);
    uint32_t port = info1 >> 16;
    bool in = info1 & 1, str = info1 & (1 << 2);
    int size = (info1 & (1 << 4)) ? 1 : (info1 & (1 << 5)) ? 2 :
               (info1 & (1 << 6)) ? 4 : 0;
    MemTxAttrs attrs = MEMTXATTRS_UNSPECIFIED;
    uint8_t data[8] = { 0 };

    qatomic_inc(&snp.stat.ioio);
    if (!size) {
        ghcb_error(g, GHCB_ERR_INVALID_INPUT);
        return;
    }
    if (snp_fault_fires(FAULT_IOIO_ERROR)) {
        snp_fault_logged("IOIO answered with a GHCB error");
        snp.fault_done = true;
        ghcb_error(g, GHCB_ERR_INVALID_INPUT);
        return;
    }
    if (str) {
        uint64_t count = ghcb_get(g, GHCB_EXIT_INFO2);
        uint64_t scratch = ghcb_get(g, GHCB_SCRATCH);
        uint64_t i;

        if (!ghcb_is_valid(g, GHCB_SCRATCH) || count > 0x7f0 / size ||
            !snp_host_can_access(scratch, count * size)) {
            ghcb_error(g, GHCB_ERR_INVALID_SCRATCH);
            return;
        }
        for (i = 0; i < count; i++) {
            if (in) {
                address_space_read(&address_space_io, port, attrs, data, size);
                address_space_write(&address_space_memory, scratch + i * size,
                                    attrs, data, size);
            } else {
                address_space_read(&address_space_memory, scratch + i * size,
                                   attrs, data, size);
                address_space_write(&address_space_io, port, attrs, data, size);
            }
        }
        ghcb_set(g, GHCB_EXIT_INFO1, 0);
        ghcb_set(g, GHCB_EXIT_INFO2, 0);
        return;
    }
    if (in) {
        address_space_read(&address_space_io, port, attrs, data, size);
        ghcb_set(g, GHCB_RAX, ldl_le_p(data) & (size == 4 ? 0xffffffffu :
                                                 (1u << (size * 8)) - 1));
    } else {
        if (!ghcb_is_valid(g, GHCB_RAX)) {
            ghcb_error(g, GHCB_ERR_MISSING_INPUT);
            return;
        }
        stl_le_p(data, (uint32_t)ghcb_get(g, GHCB_RAX));
        address_space_write(&address_space_io, port, attrs, data, size);
    }
    ghcb_set(g, GHCB_EXIT_INFO1, 0);
    ghcb_set(g, GHCB_EXIT_INFO2, 0);
}

static void snp_msr_nae(CPUX86State *env, GhcbCall *g)
{
    bool wr = ghcb_get(g, GHCB_EXIT_INFO1) & 1;
    target_ulong save[3] = {
        env->regs[R_EAX], env->regs[R_ECX], env->regs[R_EDX]
    };

    qatomic_inc(&snp.stat.msr);
    if (!ghcb_is_valid(g, GHCB_RCX) ||
        (wr && (!ghcb_is_valid(g, GHCB_RAX) || !ghcb_is_valid(g, GHCB_RDX)))) {
        ghcb_error(g, GHCB_ERR_MISSING_INPUT);
        return;
    }
    env->regs[R_ECX] = (uint32_t)ghcb_get(g, GHCB_RCX);
    env->regs[R_EAX] = (uint32_t)ghcb_get(g, GHCB_RAX);
    env->regs[R_EDX] = (uint32_t)ghcb_get(g, GHCB_RDX);
    snp_hv_msr++;
    if (wr) {
        helper_wrmsr(env);
    } else {
        helper_rdmsr(env);
        ghcb_set(g, GHCB_RAX, (uint32_t)env->regs[R_EAX]);
        ghcb_set(g, GHCB_RDX, (uint32_t)env->regs[R_EDX]);
    }
    snp_hv_msr--;
    env->regs[R_EAX] = save[0];
    env->regs[R_ECX] = save[1];
    env->regs[R_EDX] = save[2];
    ghcb_set(g, GHCB_EXIT_INFO1, 0);
    ghcb_set(g, GHCB_EXIT_INFO2, 0);
}

static void snp_cpuid_nae(CPUX86State *env, GhcbCall *g)
{
    uint32_t r[4], leaf = ghcb_get(g, GHCB_RAX), sub = ghcb_get(g, GHCB_RCX);

    qatomic_inc(&snp.stat.cpuid);
    if (!ghcb_is_valid(g, GHCB_RAX) || !ghcb_is_valid(g, GHCB_RCX) ||
        (leaf == 0xd && !ghcb_is_valid(g, GHCB_XCR0))) {
        ghcb_error(g, GHCB_ERR_MISSING_INPUT);
        return;
    }
    snp_host_cpuid(env, leaf, sub, r);
    ghcb_set(g, GHCB_RAX, r[0]);
    ghcb_set(g, GHCB_RBX, r[1]);
    ghcb_set(g, GHCB_RCX, r[2]);
    ghcb_set(g, GHCB_RDX, r[3]);
    ghcb_set(g, GHCB_EXIT_INFO1, 0);
    ghcb_set(g, GHCB_EXIT_INFO2, 0);
}

static void snp_mmio_nae(CPUX86State *env, GhcbCall *g, bool write)
{
    hwaddr gpa = ghcb_get(g, GHCB_EXIT_INFO1);
    uint64_t len = ghcb_get(g, GHCB_EXIT_INFO2);
    hwaddr data = ghcb_get(g, GHCB_SCRATCH);
    uint8_t buf[0x800];

    qatomic_inc(&snp.stat.mmio);
    if (!ghcb_is_valid(g, GHCB_SCRATCH) || len == 0 || len > sizeof(buf) ||
        !snp_host_can_access(data, len)) {
        ghcb_error(g, GHCB_ERR_INVALID_SCRATCH);
        return;
    }
    if (snp_gpa_is_ram(gpa) && !snp_host_can_access(gpa, len)) {
        ghcb_error(g, GHCB_ERR_INVALID_INPUT);
        return;
    }
    if (write) {
        address_space_read(&address_space_memory, data,
                           MEMTXATTRS_UNSPECIFIED, buf, len);
        address_space_write(&address_space_memory, gpa,
                            MEMTXATTRS_UNSPECIFIED, buf, len);
    } else {
        address_space_read(&address_space_memory, gpa,
                           MEMTXATTRS_UNSPECIFIED, buf, len);
        address_space_write(&address_space_memory, data,
                            MEMTXATTRS_UNSPECIFIED, buf, len);
    }
    ghcb_set(g, GHCB_EXIT_INFO1, 0);
    ghcb_set(g, GHCB_EXIT_INFO2, 0);
}

static void snp_psc_nae(CPUX86State *env, GhcbCall *g)
{
    hwaddr scratch = ghcb_get(g, GHCB_SCRATCH);
    uint8_t buf[0x800];
    uint32_t len;
    uint64_t rc;

    qatomic_inc(&snp.stat.psc);
    if (!ghcb_is_valid(g, GHCB_SCRATCH)) {
        ghcb_error(g, GHCB_ERR_MISSING_INPUT);
        return;
    }
    len = MIN(0x1000 - (scratch & 0xfff), sizeof(buf));
    len = MIN(len, 8 + 253 * 8);
    if (!snp_host_can_access(scratch, len)) {
        ghcb_error(g, GHCB_ERR_INVALID_SCRATCH);
        return;
    }
    address_space_read(&address_space_memory, scratch, MEMTXATTRS_UNSPECIFIED,
                       buf, len);
    rc = snp_psc_ghcb(buf, len);
    address_space_write(&address_space_memory, scratch, MEMTXATTRS_UNSPECIFIED,
                        buf, len);
    ghcb_set(g, GHCB_EXIT_INFO1, 0);
    ghcb_set(g, GHCB_EXIT_INFO2, rc);
}

static void snp_guest_req_nae(CPUX86State *env, GhcbCall *g, bool ext)
{
    hwaddr req_gpa = ghcb_get(g, GHCB_EXIT_INFO1);
    hwaddr resp_gpa = ghcb_get(g, GHCB_EXIT_INFO2);
    uint8_t req[SNP_PAGE_SIZE], resp[SNP_PAGE_SIZE];
    char log[200] = "";
    uint32_t fw;

    qatomic_inc(&snp.stat.guest_req);
    /* these two lies are told while the kernel runs: at a guest request */
    if (snp_fault_fires(FAULT_PAGE_SHARED)) {
        snp.page_shared_pending = true;
        snp.fault_done = true;
    }
    if (snp_fault_fires(FAULT_SPURIOUS_VC)) {
        snp.spurious_vc_pending = true;
    }
    if ((req_gpa | resp_gpa) & 0xfff || req_gpa == resp_gpa ||
        !snp_host_can_access(req_gpa, SNP_PAGE_SIZE) ||
        !snp_host_can_access(resp_gpa, SNP_PAGE_SIZE)) {
        ghcb_error(g, GHCB_ERR_INVALID_INPUT);
        return;
    }
    if (ext) {
        hwaddr certs = ghcb_get(g, GHCB_RAX);
        uint64_t npages = ghcb_get(g, GHCB_RBX);

        if (!ghcb_is_valid(g, GHCB_RAX) || !ghcb_is_valid(g, GHCB_RBX)) {
            ghcb_error(g, GHCB_ERR_MISSING_INPUT);
            return;
        }
        /* no certificates are provided: an empty table (a zero entry) */
        if (npages && snp_host_can_access(certs, 24)) {
            uint8_t zero[24] = { 0 };

            address_space_write(&address_space_memory, certs,
                                MEMTXATTRS_UNSPECIFIED, zero, sizeof(zero));
        }
    }
    if (snp.fault == FAULT_BUSY_FOREVER) {
        snp_fault_logged("guest request answered BUSY, for ever");
        snp.fault_done = true;
        ghcb_set(g, GHCB_EXIT_INFO1, 0);
        ghcb_set(g, GHCB_EXIT_INFO2, 2ULL << 32);
        return;
    }
    address_space_read(&address_space_memory, req_gpa, MEMTXATTRS_UNSPECIFIED,
                       req, sizeof(req));
    qemu_mutex_lock(&snp.lock);
    snp.afaults.other_report_data = snp_fault_fires(FAULT_REPORT_DATA);
    if (snp.afaults.other_report_data) {
        snp_fault_logged("the report carries other REPORT_DATA");
        snp.fault_done = true;
    }
    fw = snp_guest_request(snp.chip, &snp.guest, &snp.afaults, req, resp,
                           log, sizeof(log));
    qemu_mutex_unlock(&snp.lock);
    if (fw) {
        fprintf(stderr, "snp-emu: guest request refused (firmware error 0x%x): %s\n",
                fw, log);
    } else {
        if (snp.have_last_resp && snp_fault_fires(FAULT_REQ_REPLAY)) {
            snp_fault_logged("guest request answered with an earlier response");
            snp.fault_done = true;
            address_space_write(&address_space_memory, resp_gpa,
                                MEMTXATTRS_UNSPECIFIED, snp.last_resp,
                                sizeof(snp.last_resp));
        } else {
            memcpy(snp.last_resp, resp, sizeof(resp));
            snp.have_last_resp = true;
            if (snp_fault_fires(FAULT_REQ_ALTER)) {
                snp_fault_logged("guest request response altered");
                snp.fault_done = true;
                resp[0x60 + 0x50] ^= 0x01;   /* a ciphertext byte */
            }
            address_space_write(&address_space_memory, resp_gpa,
                                MEMTXATTRS_UNSPECIFIED, resp, sizeof(resp));
        }
    }
    ghcb_set(g, GHCB_EXIT_INFO1, 0);
    ghcb_set(g, GHCB_EXIT_INFO2, fw);
}

static G_NORETURN void snp_terminate(CPUX86State *env, uint32_t set,
                                     uint32_t code)
{
    snp_fatal(NULL, 0, SNP_EXIT_TERMINATE,
              "guest terminated: reason set %u, code %u (0x%x) on vCPU %d",
              set, code, code, env_cpu(env)->cpu_index);
}

static void snp_ghcb_protocol(CPUX86State *env, hwaddr gpa, uintptr_t ra)
{
    int idx = env_cpu(env)->cpu_index;
    GhcbCall g;
    uint64_t code;

    if (gpa != snp.ghcb_gpa[idx]) {
        snp_fatal(env, ra, SNP_EXIT_VIOLATION,
                  "GHCB protocol violation: VMGEXIT with GHCB 0x%" HWADDR_PRIx
                  " that was not registered (MSR protocol 0x012 first)", gpa);
    }
    if (!snp_host_can_access(gpa, SNP_PAGE_SIZE)) {
        snp_fatal(env, ra, SNP_EXIT_VIOLATION,
                  "GHCB protocol violation: the GHCB at 0x%" HWADDR_PRIx
                  " is a private page", gpa);
    }
    address_space_read(&address_space_memory, gpa, MEMTXATTRS_UNSPECIFIED,
                       g.page, sizeof(g.page));
    memcpy(g.valid_in, g.page + GHCB_VALID, 16);
    memset(g.page + GHCB_VALID, 0, 16);
    code = ghcb_get(&g, GHCB_EXIT_CODE);

    if (ldl_le_p(g.page + GHCB_USAGE) != 0) {
        ghcb_error(&g, GHCB_ERR_INVALID_USAGE);
    } else if (lduw_le_p(g.page + GHCB_VERSION) < 2) {
        ghcb_error(&g, GHCB_ERR_INVALID_INPUT);
    } else if (!ghcb_is_valid(&g, GHCB_EXIT_CODE) ||
               !ghcb_is_valid(&g, GHCB_EXIT_INFO1) ||
               !ghcb_is_valid(&g, GHCB_EXIT_INFO2)) {
        ghcb_error(&g, GHCB_ERR_MISSING_INPUT);
    } else {
        switch (code) {
        case NAE_IOIO:
            snp_ioio(env, &g);
            break;
        case NAE_MSR:
            snp_msr_nae(env, &g);
            break;
        case NAE_CPUID:
            snp_cpuid_nae(env, &g);
            break;
        case NAE_MMIO_READ:
        case NAE_MMIO_WRITE:
            snp_mmio_nae(env, &g, code == NAE_MMIO_WRITE);
            break;
        case NAE_PSC:
            snp_psc_nae(env, &g);
            break;
        case NAE_GUEST_REQ:
        case NAE_EXT_GUEST_REQ:
            snp_guest_req_nae(env, &g, code == NAE_EXT_GUEST_REQ);
            break;
        case NAE_HV_FEATURES:
            qatomic_inc(&snp.stat.other);
            ghcb_set(&g, GHCB_EXIT_INFO1, 0);
            ghcb_set(&g, GHCB_EXIT_INFO2, HV_FEATURES);
            break;
        case NAE_TERMINATE: {
            uint64_t info1 = ghcb_get(&g, GHCB_EXIT_INFO1);

            snp_terminate(env, info1 & 0xf, (info1 >> 4) & 0xff);
        }
        default:
            /* AP creation, AP jump table and the rest: not offered */
            qatomic_inc(&snp.stat.other);
            ghcb_error(&g, GHCB_ERR_INVALID_EVENT);
            break;
        }
    }
    /* the save area only: the shared buffer holds what the NAE wrote */
    address_space_write(&address_space_memory, gpa, MEMTXATTRS_UNSPECIFIED,
                        g.page, GHCB_SHARED_BUF);
}

static void snp_msr_protocol(CPUX86State *env, uint64_t msr, uintptr_t ra)
{
    int idx = env_cpu(env)->cpu_index;
    uint64_t resp;
    uint32_t r[4];

    qatomic_inc(&snp.stat.msr_proto);
    switch (msr & 0xfff) {
    case 0x002: /* SEV information: protocol versions 1..2, C-bit */
        resp = (2ULL << 48) | (1ULL << 32) |
               ((uint64_t)snp.cfg.cbitpos << 24) | 0x001;
        break;
    case 0x004: { /* CPUID: [63:32] leaf, [31:30] register */
        uint32_t reg = (msr >> 30) & 3;

        snp_host_cpuid(env, msr >> 32, 0, r);
        resp = ((uint64_t)r[reg] << 32) | ((uint64_t)reg << 30) | 0x005;
        break;
    }
    case 0x012: /* GHCB GPA registration */
        snp.ghcb_gpa[idx] = msr & ~0xfffULL;
        resp = (msr & ~0xfffULL) | 0x013;
        break;
    case 0x014: { /* page state change: [51:12] GFN, [55:52] op */
        hwaddr gpa = msr & 0x000ffffffffff000ULL;
        uint32_t rc = snp_psc_msr(gpa, (msr >> 52) & 0xf);

        qatomic_inc(&snp.stat.psc);
        resp = ((uint64_t)rc << 32) | 0x015;
        break;
    }
    case 0x080: /* hypervisor features */
        resp = (HV_FEATURES << 12) | 0x081;
        break;
    case 0x100: /* termination: [15:12] set, [23:16] code */
        snp_terminate(env, (msr >> 12) & 0xf, (msr >> 16) & 0xff);
    default:
        snp_fatal(env, ra, SNP_EXIT_VIOLATION,
                  "GHCB protocol violation: unknown MSR protocol request 0x%"
                  PRIx64, msr);
    }
    env->snp_ghcb_msr = resp;
}

void helper_snp_vmgexit(CPUX86State *env, int insn_len)
{
    uint64_t msr = env->snp_ghcb_msr;

    qatomic_inc(&snp.stat.vmgexit);
    if (msr & 0xfff) {
        snp_msr_protocol(env, msr, GETPC());
    } else {
        snp_ghcb_protocol(env, msr, GETPC());
    }

    if (snp.page_shared_pending) {
        /* RMPUPDATE the page under the guest's stack to shared and back to
         * private: guest-owned again, but no longer validated */
        hwaddr gpa;
        bool enc;

        snp.page_shared_pending = false;
        gpa = snp_emu_translate(env, env->regs[R_ESP] & ~0xfffULL, &enc,
                                GETPC());
        if (snp_rmp_entry(gpa)) {
            qemu_mutex_lock(&snp.lock);
            snp.rmp[gpa >> 12] = RMP_ASSIGNED;
            qemu_mutex_unlock(&snp.lock);
            snp_flush_all_tlbs();
            fprintf(stderr, "snp-emu: fault injected: page at GPA 0x%"
                    HWADDR_PRIx " turned shared and back (no longer validated)\n",
                    gpa);
        }
    }
    if (snp.spurious_vc_pending) {
        snp.spurious_vc_pending = false;
        /* inject #VC(CPUID) at the instruction after VMGEXIT: no CPUID there */
        snp_fault_logged("spurious #VC (exit code 0x72) injected after VMGEXIT");
        snp.fault_done = true;
        env->eip += insn_len;
        qatomic_inc(&snp.stat.vc);
        raise_exception_err(env, EXCP1D_VC, NAE_CPUID);
    }
}

/* ---------------------------------------------------------------- launch */

void snp_emu_cpu_reset(CPUX86State *env)
{
    CPUState *cs = env_cpu(env);

    /* The launch VMSA (QEMU's reset state as KVM fills it in): EFER.SVME,
     * CR4.MCE, and for APs the reset address of the SEV info block. */
    cpu_load_efer(env, env->efer | MSR_EFER_SVME);
    cpu_x86_update_cr4(env, env->cr[4] | CR4_MCE_MASK);
    /* KVM's CD/NW quirk clears both at reset: CR0 0x10 in the VMSA */
    cpu_x86_update_cr0(env, env->cr[0] & ~(CR0_CD_MASK | CR0_NW_MASK));
    sev_es_set_reset_vector(cs);
    /* KVM answers SEV information in the GHCB MSR when a vCPU is created */
    env->snp_ghcb_msr = (2ULL << 48) | (1ULL << 32) |
                        ((uint64_t)snp.cfg.cbitpos << 24) | 0x001;
}

int snp_emu_launch_update(hwaddr gpa, uint8_t *ptr, uint64_t len,
                          Error **errp)
{
    if (snp.nlaunch == SNP_MAX_LAUNCH || (gpa | len) & 0xfff) {
        error_setg(errp, "snp-emu: launch range 0x%" HWADDR_PRIx "+0x%" PRIx64
                   " is not page aligned or there are too many ranges", gpa, len);
        return -1;
    }
    snp.launch[snp.nlaunch].gpa = gpa;
    snp.launch[snp.nlaunch].len = len;
    snp.nlaunch++;
    return 0;
}

static void snp_seg(SnpVmsaSeg *s, const SegmentCache *c)
{
    s->selector = c->selector;
    s->attrib = ((c->flags >> DESC_TYPE_SHIFT) & 0xff) |
                ((c->flags >> 12) & 0xf00);
    s->limit = c->limit;
    s->base = c->base;
}

static void snp_vmsa_of(CPUX86State *env, uint8_t *page)
{
    SnpVmsaState st = { 0 };

    snp_seg(&st.es, &env->segs[R_ES]);
    snp_seg(&st.cs, &env->segs[R_CS]);
    snp_seg(&st.ss, &env->segs[R_SS]);
    snp_seg(&st.ds, &env->segs[R_DS]);
    snp_seg(&st.fs, &env->segs[R_FS]);
    snp_seg(&st.gs, &env->segs[R_GS]);
    snp_seg(&st.ldtr, &env->ldt);
    snp_seg(&st.tr, &env->tr);
    st.gdtr.limit = env->gdt.limit;
    st.gdtr.base = env->gdt.base;
    st.idtr.limit = env->idt.limit;
    st.idtr.base = env->idt.base;
    st.efer = env->efer;
    st.cr0 = env->cr[0];
    st.cr3 = env->cr[3];
    st.cr4 = env->cr[4];
    st.dr6 = env->dr[6];
    st.dr7 = env->dr[7];
    st.rflags = cpu_compute_eflags(env);
    st.rip = env->eip;
    st.rsp = env->regs[R_ESP];
    st.rax = env->regs[R_EAX];
    st.rbx = env->regs[R_EBX];
    st.rcx = env->regs[R_ECX];
    st.rdx = env->regs[R_EDX];
    st.rsi = env->regs[R_ESI];
    st.rdi = env->regs[R_EDI];
    st.rbp = env->regs[R_EBP];
    st.g_pat = env->pat;
    st.xcr0 = env->xcr0;
    st.xss = env->xss;
    st.mxcsr = env->mxcsr;
    st.x87_fcw = env->fpuc;
    st.sev_features = snp.cfg.sev_features;
    snp_vmsa_build(&st, page);
}

static void snp_measure_page(SnpLaunchDigest *ld, hwaddr gpa, int type)
{
    uint8_t page[SNP_PAGE_SIZE];

    if (type == SNP_PAGE_NORMAL) {
        address_space_read(&address_space_memory, gpa, MEMTXATTRS_UNSPECIFIED,
                           page, sizeof(page));
    }
    if (snp_ld_update(ld, gpa, type, type == SNP_PAGE_NORMAL ? page : NULL)) {
        error_report("snp-emu: SHA-384 failed while measuring the launch");
        exit(1);
    }
    snp.rmp[gpa >> 12] = RMP_ASSIGNED | RMP_VALIDATED;
    snp.pages_validated_at_launch++;
}

static void snp_launch_finish(void)
{
    OvmfSevMetadata *md = pc_system_get_ovmf_sev_metadata_ptr();
    CPUState *cs;
    SnpLaunchDigest ld;
    uint8_t page[SNP_PAGE_SIZE];
    char err[512];
    char hex[97];
    int i;
    uint64_t off;

    if (!md) {
        error_report("snp-emu: the image has no SEV metadata (ASEV): an SNP "
                     "launch needs its secrets, CPUID and pre-validated pages");
        exit(1);
    }
    snp_ld_init(&ld);
    /* 1. the firmware image, as NORMAL pages (sev_encrypt_flash) */
    for (i = 0; i < snp.nlaunch; i++) {
        for (off = 0; off < snp.launch[i].len; off += SNP_PAGE_SIZE) {
            snp_measure_page(&ld, snp.launch[i].gpa + off, SNP_PAGE_NORMAL);
        }
    }
    /* 2. the ASEV metadata sections, in table order */
    for (i = 0; i < md->num_desc; i++) {
        OvmfSevMetadataDesc *d = &md->descs[i];
        int type;

        if ((d->base | d->len) & 0xfff || !d->len ||
            !snp_rmp_entry((hwaddr)d->base + d->len - 1)) {
            error_report("snp-emu: ASEV section %d (0x%x+0x%x) is not whole "
                         "pages of low memory", i, d->base, d->len);
            exit(1);
        }
        for (off = 0; off < d->len; off += SNP_PAGE_SIZE) {
            hwaddr gpa = d->base + off;

            switch (d->type) {
            case 2: /* SNP_SECRETS */
                type = SNP_PAGE_SECRETS;
                if (off == 0) {
                    if (snp_secrets_fill(page, snp.guest.vmpck)) {
                        error_report("snp-emu: no randomness for the VMPCKs");
                        exit(1);
                    }
                } else {
                    memset(page, 0, sizeof(page));
                }
                break;
            case 3: /* CPUID */
                type = SNP_PAGE_CPUID;
                snp_fill_cpuid_page(&X86_CPU(first_cpu)->env, page);
                break;
            default: /* SNP_SEC_MEM, SVSM CAA, anything else: zero pages */
                type = SNP_PAGE_ZERO;
                memset(page, 0, sizeof(page));
                break;
            }
            address_space_write(&address_space_memory, gpa,
                                MEMTXATTRS_UNSPECIFIED, page, sizeof(page));
            snp_measure_page(&ld, gpa, type);
        }
    }
    /* 3. one VMSA per vCPU, at the GPA KVM uses */
    CPU_FOREACH(cs) {
        snp_vmsa_of(&X86_CPU(cs)->env, page);
        if (snp_ld_update(&ld, 0xfffffffff000ULL, SNP_PAGE_VMSA, page)) {
            error_report("snp-emu: SHA-384 failed while measuring a VMSA");
            exit(1);
        }
    }
    memcpy(snp.guest.measurement, ld.ld, 48);
    for (i = 0; i < 48; i++) {
        snprintf(hex + 2 * i, 3, "%02x", ld.ld[i]);
    }
    fprintf(stderr, "snp-emu: launch digest %s\n", hex);

    /* 4. SNP_LAUNCH_FINISH: the ID block, when one is given */
    if (snp.cfg.id_block) {
        if (!snp.cfg.id_auth ||
            snp_id_check(snp.cfg.id_block, 96, snp.cfg.id_auth, 4096,
                         snp.cfg.author_key_en, ld.ld, snp.cfg.policy,
                         &snp.guest.id, err, sizeof(err))) {
            error_report("snp-emu: SNP_LAUNCH_FINISH refused the ID block: %s",
                         snp.cfg.id_auth ? err : "id-auth is missing");
            exit(1);
        }
        fprintf(stderr, "snp-emu: ID block accepted\n");
    }
    snp.guest.policy = snp.cfg.policy;
    memcpy(snp.guest.host_data, snp.cfg.host_data, 32);
    snp.guest.cpuid_fms = X86_CPU(first_cpu)->env.cpuid_version;
    snp.chip = snp_chip_new(snp.cfg.certs, err, sizeof(err));
    if (!snp.chip) {
        error_report("snp-emu: %s", err);
        exit(1);
    }
    if (snp.cfg.certs) {
        fprintf(stderr, "snp-emu: ARK, ASK and VCEK in %s\n", snp.cfg.certs);
    }
    fprintf(stderr, "snp-emu: %" PRIu64 " pages measured and validated at launch\n",
            snp.pages_validated_at_launch);
    snp.launched = true;
}

static void snp_vm_state_change(void *opaque, bool running, RunState state)
{
    if (running && !snp.launched) {
        snp_launch_finish();
    }
}

static void snp_parse_fault(const char *spec)
{
    const char *at = strchr(spec, '@');
    size_t n = at ? (size_t)(at - spec) : strlen(spec);
    size_t i;

    for (i = 0; i < ARRAY_SIZE(snp_faults); i++) {
        if (strlen(snp_faults[i].name) == n &&
            !strncmp(spec, snp_faults[i].name, n)) {
            snp.fault = snp_faults[i].fault;
            snp.fault_after = at ? strtoull(at + 1, NULL, 0)
                                 : snp_faults[i].default_after;
            return;
        }
    }
    error_report("snp-emu: unknown fault '%s'; known: cpuid-lie, ioio-error, "
                 "psc-noop, page-shared, spurious-vc, guest-req-replay, "
                 "guest-req-alter, report-data, busy-forever, vmpl1, rmp-4k, alias (NAME[@N]: lie "
                 "on the N-th event of that kind, counting from 0)", spec);
    exit(1);
}

void sev_snp_emu_machine_init(void)
{
    Error *err = NULL;
    X86CPU *cpu = first_cpu ? X86_CPU(first_cpu) : NULL;

    if (!sev_snp_emulated() || snp_emu_on) {
        return;
    }
    if (!tcg_enabled()) {
        error_report("sev-snp-guest,emulated=on needs -accel tcg (the emulated "
                     "SEV-SNP platform runs under TCG only; drop emulated=on "
                     "to launch on an SNP host with KVM)");
        exit(1);
    }
    if (!sev_snp_emu_get_config(&snp.cfg, &err)) {
        error_report_err(err);
        exit(1);
    }
    if (snp.cfg.cbitpos < 32 || snp.cfg.cbitpos > 51 ||
        (cpu && snp.cfg.cbitpos < cpu->phys_bits)) {
        error_report("snp-emu: cbitpos=%u must be above the guest's physical "
                     "address width (%u bits) and at most 51: use 47 or 51",
                     snp.cfg.cbitpos, cpu ? cpu->phys_bits : 0);
        exit(1);
    }
    if (!(snp.cfg.sev_features & 1)) {
        error_report("snp-emu: sev-features must have bit 0 (SNPActive) set");
        exit(1);
    }
    if (current_machine->smp.cpus > SNP_MAX_VCPUS) {
        error_report("snp-emu: at most %d vCPUs are emulated", SNP_MAX_VCPUS);
        exit(1);
    }
    if (snp.cfg.fault && *snp.cfg.fault) {
        snp_parse_fault(snp.cfg.fault);
    }
    qemu_mutex_init(&snp.lock);
    snp.rmp = g_malloc0(RMP_PAGES);
    snp.ramtype = g_malloc0(RMP_PAGES);
    snp_emu_cmask = 1ULL << snp.cfg.cbitpos;
    snp_emu_on = true;
    ((ConfidentialGuestSupport *)snp.cfg.cgs)->ready = true;
    dma_access_check_hook = snp_dma_check;
    qemu_add_vm_change_state_handler(snp_vm_state_change, NULL);
    atexit(snp_print_stats);
    fprintf(stderr, "snp-emu: emulated SEV-SNP platform: C-bit %u, policy 0x%"
            PRIx64 ", SEV_FEATURES 0x%" PRIx64 "%s%s\n", snp.cfg.cbitpos,
            snp.cfg.policy, snp.cfg.sev_features,
            snp.fault ? ", fault " : "", snp.fault ? snp.cfg.fault : "");
}
