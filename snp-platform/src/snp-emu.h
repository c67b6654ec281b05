/*
 * Vellum emulated SEV-SNP platform: the QEMU side (TCG hooks).
 *
 * With `-object sev-snp-guest,...,emulated=on -accel tcg` the guest sees what
 * an SEV-SNP guest sees: CPUID 0x8000001F, SEV_STATUS, a guest-owned GHCB MSR,
 * #VC for CPUID, port I/O, MSRs and MMIO, VMGEXIT (MSR and GHCB protocols),
 * PVALIDATE and RMPADJUST, an RMP checked on every page-table walk, and a
 * launch measured and signed by an emulated AMD-SP (snp-emu-pure.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef VELLUM_SNP_EMU_H
#define VELLUM_SNP_EMU_H

#include "exec/hwaddr.h"
#include "exec/mmu-access-type.h"

/* What the sev-snp-guest object says about an emulated launch (sev.c). */
typedef struct SnpEmuConfig {
    void *cgs;                  /* the ConfidentialGuestSupport object */
    uint32_t cbitpos;
    uint32_t reduced_phys_bits;
    uint64_t policy;
    uint64_t sev_features;      /* VMSA SEV_FEATURES; SEV_STATUS = 3 | f << 2 */
    const uint8_t *id_block;    /* 96 bytes, or NULL */
    const uint8_t *id_auth;     /* 4096 bytes, or NULL */
    bool author_key_en;
    uint8_t host_data[32];
    const char *certs;          /* directory for ARK/ASK/VCEK, or NULL */
    const char *fault;          /* fault injection NAME[@N], or NULL */
} SnpEmuConfig;

/* True once an emulated SNP launch has started (set before any vCPU runs). */
extern bool snp_emu_on;
/* The C-bit as a page-table entry mask (0 when not emulating). */
extern uint64_t snp_emu_cmask;

bool sev_snp_emu_get_config(SnpEmuConfig *cfg, Error **errp);
int snp_emu_launch_update(hwaddr gpa, uint8_t *ptr, uint64_t len,
                          Error **errp);

static inline uint64_t snp_emu_cbit_mask(void)
{
    return snp_emu_cmask;
}

/* Strips the C-bit from a page-table entry, noting whether it was set. */
static inline uint64_t snp_emu_pte(uint64_t pte, uint64_t cmask, bool *cbit)
{
    *cbit = (pte & cmask) != 0;
    return pte & ~cmask;
}

#if defined(I386_CPU_H)
/* #VC with the SVM exit code as error code (APM vol. 2 15.35.5). */
G_NORETURN void snp_emu_raise_vc(CPUX86State *env, uint32_t exit_code,
                                 uintptr_t ra);
/* RDMSR/WRMSR: true when handled here (GHCB MSR, SEV_STATUS); raises #VC
 * for an intercepted MSR; false for one the guest accesses directly. */
bool snp_emu_msr(CPUX86State *env, bool write, uintptr_t ra);
/* Checks a translated access against the RMP (called from tlb_fill). */
bool snp_emu_tlb_check(CPUX86State *env, vaddr addr, hwaddr paddr, bool enc,
                       MMUAccessType type, int *prot, bool probe,
                       uintptr_t ra);
/* Page walk for PVALIDATE/RMPADJUST (excp_helper.c). */
hwaddr snp_emu_translate(CPUX86State *env, vaddr addr, bool *enc,
                         uintptr_t retaddr);
/* Ends the run: the guest shut down (a triple fault), status 87. */
G_NORETURN void snp_emu_shutdown(CPUX86State *env, const char *why);
/* The launch VMSA state for a vCPU at reset (cpu.c). */
void snp_emu_cpu_reset(CPUX86State *env);
#endif

#endif
