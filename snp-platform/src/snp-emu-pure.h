/*
 * Vellum emulated SEV-SNP platform: the pure half (no QEMU headers).
 *
 * These functions are the emulated AMD-SP: the launch digest, the VMSA page,
 * the ID block check, SNP guest messages and signed attestation reports.
 * They depend only on libc and OpenSSL's libcrypto, so that they can be
 * compiled and tested on their own (snp-platform/tests/) as well as inside
 * QEMU (snp-platform/src/snp-emu.c calls them).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef VELLUM_SNP_EMU_PURE_H
#define VELLUM_SNP_EMU_PURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SNP_PAGE_SIZE 4096

/* Little-endian fields, as every SNP structure stores them. */
static inline void snp_put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void snp_put_le32(uint8_t *p, uint32_t v)
{
    snp_put_le16(p, (uint16_t)v);
    snp_put_le16(p + 2, (uint16_t)(v >> 16));
}

static inline void snp_put_le64(uint8_t *p, uint64_t v)
{
    snp_put_le32(p, (uint32_t)v);
    snp_put_le32(p + 4, (uint32_t)(v >> 32));
}

static inline uint16_t snp_get_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t snp_get_le32(const uint8_t *p)
{
    return snp_get_le16(p) | ((uint32_t)snp_get_le16(p + 2) << 16);
}

static inline uint64_t snp_get_le64(const uint8_t *p)
{
    return snp_get_le32(p) | ((uint64_t)snp_get_le32(p + 4) << 32);
}

/* ---------------------------------------------------------------- launch */

/* PAGE_INFO page types (SNP firmware ABI 56860, SNP_LAUNCH_UPDATE). */
enum {
    SNP_PAGE_NORMAL = 1,
    SNP_PAGE_VMSA = 2,
    SNP_PAGE_ZERO = 3,
    SNP_PAGE_UNMEASURED = 4,
    SNP_PAGE_SECRETS = 5,
    SNP_PAGE_CPUID = 6,
};

/* The running launch digest (48 bytes, starts at zero). */
typedef struct SnpLaunchDigest {
    uint8_t ld[48];
} SnpLaunchDigest;

void snp_ld_init(SnpLaunchDigest *d);
/*
 * Extends the digest by one page's PAGE_INFO, as SNP_LAUNCH_UPDATE does.
 * `contents` is the 4 KiB page for NORMAL and VMSA pages; it is ignored
 * (and may be NULL) for the other types, whose contents are measured as zero.
 * Returns 0, or -1 if the hash failed (OpenSSL error).
 */
int snp_ld_update(SnpLaunchDigest *d, uint64_t gpa, int page_type,
                  const uint8_t *contents);

/* A VMCB segment register as the VMSA stores it. */
typedef struct SnpVmsaSeg {
    uint16_t selector;
    uint16_t attrib;      /* descriptor bits 8..15 and 20..23, packed */
    uint32_t limit;
    uint64_t base;
} SnpVmsaSeg;

/* The register state KVM copies into a vCPU's VMSA at SNP_LAUNCH_FINISH. */
typedef struct SnpVmsaState {
    SnpVmsaSeg es, cs, ss, ds, fs, gs, gdtr, ldtr, idtr, tr;
    uint64_t efer, cr0, cr3, cr4, dr6, dr7, rflags, rip, rsp;
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp;
    uint64_t g_pat, xcr0, xss;
    uint32_t mxcsr;
    uint16_t x87_fcw;
    uint64_t sev_features;
} SnpVmsaState;

/* Lays out the VMSA page (APM vol. 2 table B-4) for that state. */
void snp_vmsa_build(const SnpVmsaState *s, uint8_t page[SNP_PAGE_SIZE]);

/* SNP_LAUNCH_FINISH's ID block (96 bytes) fields, once checked. */
typedef struct SnpIdInfo {
    bool present;
    uint8_t family_id[16];
    uint8_t image_id[16];
    uint32_t guest_svn;
    uint8_t id_key_digest[48];     /* SHA-384 of the ID public key */
    uint8_t author_key_digest[48]; /* zero unless author_key_en */
    bool author_key_en;
} SnpIdInfo;

/*
 * Checks an ID block (96 bytes) and ID auth structure (4096 bytes) as the
 * AMD-SP does at SNP_LAUNCH_FINISH: the block's launch digest equals
 * `measurement`, its policy equals `policy`, the ID key's signature over the
 * block verifies, and with `author_key_en` the author key's signature over
 * the ID key verifies. Fills `out` on success and returns 0; otherwise
 * returns -1 with a sentence in `err`.
 */
int snp_id_check(const uint8_t *id_block, size_t id_block_len,
                 const uint8_t *id_auth, size_t id_auth_len,
                 bool author_key_en, const uint8_t measurement[48],
                 uint64_t policy, SnpIdInfo *out, char *err, size_t errlen);

/* ---------------------------------------------------------------- secrets */

/*
 * Fills the secrets page (SNP firmware ABI 56860, "Secrets page" layout,
 * version 3) with fresh random VMPCK0..3 and copies the keys to `vmpck`.
 * Returns 0, or -1 if no randomness could be had.
 */
int snp_secrets_fill(uint8_t page[SNP_PAGE_SIZE], uint8_t vmpck[4][32]);

/* ---------------------------------------------------------------- attestation */

/*
 * The SNP guest message header (SNP firmware ABI 56860, "Guest Messages"):
 * the AES-256-GCM tag at 0x00, the sequence number (the IV) at 0x20, then
 * the authenticated fields 0x30..0x5F, then the payload.
 */
#define SNP_MSG_TAG 0x00
#define SNP_MSG_SEQNO 0x20
#define SNP_MSG_ALGO 0x30
#define SNP_MSG_HDR_VERSION 0x31
#define SNP_MSG_HDR_SIZE 0x32
#define SNP_MSG_TYPE 0x34
#define SNP_MSG_VERSION 0x35
#define SNP_MSG_SIZE 0x36
#define SNP_MSG_VMPCK 0x3C
#define SNP_MSG_AAD 0x30
#define SNP_MSG_HDR_LEN 0x60

/* The emulated chip: its VCEK and, when a directory is given, the ARK and ASK. */
typedef struct SnpChip SnpChip;

/*
 * Makes an emulated chip: a P-384 VCEK and a chip id. With `certs_dir`, also
 * an RSA-4096 ARK (self-signed) and ASK, and writes ark.pem, ask.pem and
 * vcek.pem there (the layout `snpguest fetch ca/vcek pem DIR` produces;
 * certificates as AMD's KDS issues them: RSASSA-PSS SHA-384, the VCEK's TCB
 * and hardware-id extensions). If the directory already holds a chip made
 * earlier (keys in DIR/private/), that chip is loaded instead, so one
 * directory is one machine across launches. Returns NULL with a sentence in
 * `err` on failure.
 */
SnpChip *snp_chip_new(const char *certs_dir, char *err, size_t errlen);
void snp_chip_free(SnpChip *chip);
/* The chip's reported TCB (u64, as in the report and the VCEK extensions). */
uint64_t snp_chip_tcb(const SnpChip *chip);

/* What the firmware knows about the running guest, for its reports. */
typedef struct SnpGuestInfo {
    uint64_t policy;
    uint8_t measurement[48];
    uint8_t host_data[32];
    SnpIdInfo id;
    uint32_t cpuid_fms;     /* CPUID(1).EAX of the vCPU model, for the report */
    uint8_t vmpck[4][32];   /* from the secrets page at launch */
    uint64_t seqno[4];      /* last sequence number used per VMPCK (starts 0) */
    bool vmpck_disabled[4]; /* set by the caller to refuse a VMPCK (firmware never sets it) */
} SnpGuestInfo;

/* Fault injections inside the emulated firmware (tests of a lying platform). */
typedef struct SnpAttestFaults {
    bool other_report_data; /* sign a report whose REPORT_DATA differs */
} SnpAttestFaults;

/*
 * One SNP_GUEST_REQUEST as the AMD-SP handles it. `req` is a private copy of
 * the guest's request page; the response page is written to `resp`.
 * Decrypts the message with the VMPCK it names, enforces the sequence number
 * (request = last + 1; response = request + 1; both advance the state),
 * answers MSG_REPORT_REQ with a signed ATTESTATION_REPORT (version 3)
 * sealed under the same VMPCK. Returns the firmware status for
 * SW_EXITINFO2[31:0]: 0 on success, or a nonzero firmware error (and `resp`
 * untouched) for a message that does not authenticate, a wrong sequence
 * number, an unknown message type or a bad size. `log` (may be NULL) gets a
 * one-line description of what was refused.
 */
uint32_t snp_guest_request(const SnpChip *chip, SnpGuestInfo *guest,
                           const SnpAttestFaults *faults,
                           const uint8_t req[SNP_PAGE_SIZE],
                           uint8_t resp[SNP_PAGE_SIZE],
                           char *log, size_t loglen);

/* Firmware status codes used above (SNP firmware ABI 56860, table "Status Codes"). */
#define SNP_FW_SUCCESS 0x00
#define SNP_FW_INVALID_PARAM 0x16
#define SNP_FW_AEAD_OFLOW 0x1D   /* sequence numbers exhausted */

#endif
