/*
 * Tests of snp-emu-attest.c: SNP_GUEST_REQUEST as a guest sees it (requests
 * sealed here with AES-256-GCM under a VMPCK, responses opened and the
 * report checked field by field), its refusals and the sequence numbers,
 * the report signature, the emulated chip's certificates, and that the
 * repository's verifier (`image verify --report`) accepts its reports and
 * refuses altered ones.
 *
 * Run by run.sh (which sets VELLUM_ROOT); needs cargo for `image verify`.
 * Standalone:
 *   cc -std=c11 -Wall -Wextra -Werror -O1 -I snp-platform/src \
 *      snp-platform/src/snp-emu-attest.c snp-platform/tests/test-attest.c \
 *      -lcrypto && ./a.out
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _XOPEN_SOURCE 700

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "snp-emu-pure.h"
#include "test-common.h"


#define TEST_PRINTF(a, b) __attribute__((format(printf, a, b)))


/* ---------------------------------------------------------------- utilities */







static bool is_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i]) {
            return false;
        }
    }
    return true;
}

static bool is_all(const uint8_t *p, size_t len, uint8_t v)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] != v) {
            return false;
        }
    }
    return true;
}

static void tohex(const uint8_t *d, size_t len, char *out)
{
    for (size_t i = 0; i < len; i++) {
        snprintf(out + 2 * i, 3, "%02x", d[i]);
    }
}

/*
 * The repository root, absolute: $VELLUM_ROOT, else the cwd when it is the
 * root, else ../.. of the cwd (snp-platform/tests).
 */
static const char *root_dir(void)
{
    static char root[4096];
    const char *r = getenv("VELLUM_ROOT");
    struct stat st;

    if (!r || !*r) {
        r = stat("snp-platform/tests", &st) == 0 ? "." : "../..";
    }
    if (!root[0] && !realpath(r, root)) {
        snprintf(root, sizeof(root), "%s", r);
    }
    return root;
}

/*
 * Runs a shell command in the repository root, with its output in `out`
 * (may be NULL); returns its exit status (-1 if it could not run).
 */
static int TEST_PRINTF(3, 4) run(char *out, size_t outlen, const char *fmt,
                                  ...)
{
    char args[2048], cmd[8192], sink[256];
    size_t len = 0, n;
    va_list ap;
    FILE *p;
    int st;

    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "cd '%s' && %s 2>&1", root_dir(), args);
    p = popen(cmd, "r");
    if (!p) {
        return -1;
    }
    if (!out) {
        out = sink;
        outlen = sizeof(sink);
    }
    while ((n = fread(out + len, 1, outlen - len - 1, p)) > 0) {
        len += n;
        if (len + 1 >= outlen) {
            /* Keep the last part, where the verdict is. */
            memmove(out, out + outlen / 2, len - outlen / 2);
            len -= outlen / 2;
        }
    }
    out[len] = '\0';
    st = pclose(p);
    return st < 0 ? -1 : (st >> 8 & 0xff);
}


static bool write_file(const char *path, const uint8_t *d, size_t len)
{
    FILE *f = fopen(path, "wb");
    bool ok = f && fwrite(d, 1, len, f) == len;

    if (f && fclose(f) != 0) {
        ok = false;
    }
    return ok;
}

static bool same_file(const char *a, const char *b)
{
    size_t la, lb;
    uint8_t *x = read_file(a, &la), *y = read_file(b, &lb);
    bool same = x && y && la == lb && memcmp(x, y, la) == 0;

    free(x);
    free(y);
    return same;
}

/* ---------------------------------------------------------------- the guest */

/* Guest message header (56860 §7; docs/snp-reference.md §5.2). */
#define REPORT_LEN 0x4A0
#define RSP_LEN (0x20 + REPORT_LEN)

/* AES-256-GCM with IV = seqno (LE, 12 bytes), AAD = header 0x30..0x5F. */
static bool gcm(bool enc, const uint8_t key[32], uint64_t seqno,
                const uint8_t *aad, const uint8_t *in, size_t len,
                uint8_t *out, uint8_t tag[16])
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    uint8_t iv[12] = { 0 };
    int n = 0, fin = 0;
    bool ok;

    snp_put_le64(iv, seqno);
    ok = c && EVP_CipherInit_ex2(c, EVP_aes_256_gcm(), key, iv, enc, NULL) &&
         EVP_CipherUpdate(c, NULL, &n, aad, 0x30) &&
         (len == 0 || EVP_CipherUpdate(c, out, &n, in, (int)len)) &&
         (enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag)) &&
         EVP_CipherFinal_ex(c, out + (len ? n : 0), &fin) == 1 &&
         (!enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag));
    EVP_CIPHER_CTX_free(c);
    return ok;
}

/* Seals a request as a guest does (boot/src/snp/guest_msg.rs seal_request). */
static void seal(uint8_t page[SNP_PAGE_SIZE], const uint8_t key[32],
                 uint64_t seqno, uint8_t type, uint8_t version, uint8_t vmpck,
                 const uint8_t *payload, size_t len)
{
    memset(page, 0, SNP_PAGE_SIZE);
    snp_put_le64(page + SNP_MSG_SEQNO, seqno);
    page[SNP_MSG_ALGO] = 1;
    page[SNP_MSG_HDR_VERSION] = 1;
    snp_put_le16(page + SNP_MSG_HDR_SIZE, SNP_MSG_HDR_LEN);
    page[SNP_MSG_TYPE] = type;
    page[SNP_MSG_VERSION] = version;
    snp_put_le16(page + SNP_MSG_SIZE, (uint16_t)len);
    page[SNP_MSG_VMPCK] = vmpck;
    if (!gcm(true, key, seqno, page + 0x30, payload, len, page + SNP_MSG_HDR_LEN, page)) {
        fprintf(stderr, "test-attest: AES-GCM failed\n");
        exit(2);
    }
}

/* MSG_REPORT_REQ payload: REPORT_DATA[64] | u32 VMPL | u32 KEY_SEL | rsvd. */
static void report_req(uint8_t p[96], const uint8_t data[64], uint32_t vmpl,
                       uint32_t key_sel)
{
    memset(p, 0, 96);
    memcpy(p, data, 64);
    snp_put_le32(p + 64, vmpl);
    snp_put_le32(p + 68, key_sel);
}

static void seal_report(uint8_t page[SNP_PAGE_SIZE], const uint8_t key[32],
                        uint64_t seqno, uint8_t vmpck, const uint8_t data[64],
                        uint32_t vmpl)
{
    uint8_t p[96];

    report_req(p, data, vmpl, 0);
    seal(page, key, seqno, 5, 1, vmpck, p, sizeof(p));
}

/*
 * Opens a response as the guest does (open_response): header, type 6,
 * version 1, the same VMPCK, seqno = request + 1, size, tag. Fills `rsp`
 * (1216 bytes).
 */
static bool open_resp(const uint8_t page[SNP_PAGE_SIZE], const uint8_t key[32],
                      uint64_t req_seqno, uint8_t vmpck, uint8_t rsp[RSP_LEN])
{
    uint8_t tag[16];

    if (page[SNP_MSG_ALGO] != 1 || page[SNP_MSG_HDR_VERSION] != 1 ||
        snp_get_le16(page + SNP_MSG_HDR_SIZE) != SNP_MSG_HDR_LEN || page[SNP_MSG_TYPE] != 6 ||
        page[SNP_MSG_VERSION] != 1 || page[SNP_MSG_VMPCK] != vmpck ||
        snp_get_le64(page + SNP_MSG_SEQNO) != req_seqno + 1 ||
        snp_get_le16(page + SNP_MSG_SIZE) != RSP_LEN) {
        return false;
    }
    memcpy(tag, page, 16);
    return is_zero(page + 16, 16) &&
           gcm(false, key, req_seqno + 1, page + 0x30, page + SNP_MSG_HDR_LEN, RSP_LEN,
               rsp, tag);
}

/* ---------------------------------------------------------------- signature */

/* ECDSA P-384/SHA-384 over report[0, 0x2A0), R and S 72-byte LE fields. */
static bool report_sig_ok(EVP_PKEY *vcek, const uint8_t *report)
{
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_lebin2bn(report + 0x2A0, 72, NULL);
    BIGNUM *s = BN_lebin2bn(report + 0x2E8, 72, NULL);
    unsigned char *der = NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int derlen;
    bool ok = false;

    if (!sig || !r || !s || ECDSA_SIG_set0(sig, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        goto out;
    }
    derlen = i2d_ECDSA_SIG(sig, &der);
    ok = derlen > 0 && md &&
         EVP_DigestVerifyInit_ex(md, NULL, "SHA384", NULL, NULL, vcek,
                                 NULL) == 1 &&
         EVP_DigestVerify(md, der, derlen, report, 0x2A0) == 1;

out:
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    ECDSA_SIG_free(sig);
    return ok;
}

/* ---------------------------------------------------------------- requests */

#define TCB_WANT 0x7308000000000003ULL   /* bl 3, TEE 0, SNP 8, ucode 115 */
#define FMS_MILAN 0x00A00F11u            /* EPYC-Milan: family 19h model 1 */

static void guest_init(SnpGuestInfo *g)
{
    memset(g, 0, sizeof(*g));
    g->policy = 0x30000;
    memset(g->measurement, 0x4d, 48);
    memset(g->host_data, 0x4b, 32);
    g->id.present = true;
    memset(g->id.family_id, 0xf1, 16);
    memset(g->id.image_id, 0x1a, 16);
    g->id.guest_svn = 7;
    memset(g->id.id_key_digest, 0x1d, 48);
    memset(g->id.author_key_digest, 0xad, 48);
    g->id.author_key_en = true;
    g->cpuid_fms = FMS_MILAN;
    RAND_bytes(&g->vmpck[0][0], sizeof(g->vmpck));
}

/* One exchange that must succeed; the report goes to `report`. */
static bool exchange(const SnpChip *chip, SnpGuestInfo *g,
                     const SnpAttestFaults *f, uint8_t vmpck, uint64_t seqno,
                     const uint8_t data[64], uint32_t vmpl,
                     uint8_t rsp[RSP_LEN])
{
    uint8_t req[SNP_PAGE_SIZE], resp[SNP_PAGE_SIZE];
    char log[256];
    uint32_t fw;

    seal_report(req, g->vmpck[vmpck], seqno, vmpck, data, vmpl);
    fw = snp_guest_request(chip, g, f, req, resp, log, sizeof(log));
    if (fw != 0) {
        printf("        refused (0x%x): %s\n", fw, log);
        return false;
    }
    return open_resp(resp, g->vmpck[vmpck], seqno, vmpck, rsp);
}

static void test_report_fields(const SnpGuestInfo *g, const uint8_t *rsp,
                               const uint8_t data[64], uint32_t vmpl)
{
    const uint8_t *r = rsp + 0x20;

    check(snp_get_le32(rsp) == 0 && snp_get_le32(rsp + 4) == REPORT_LEN &&
          is_zero(rsp + 8, 24),
          "MSG_REPORT_RSP: status 0, report_size 1184");
    check(snp_get_le32(r + 0x00) == 3, "report version 3");
    check(snp_get_le32(r + 0x04) == 7, "guest SVN from the ID block");
    check(snp_get_le64(r + 0x08) == 0x30000, "policy");
    check(is_all(r + 0x10, 16, 0xf1) && is_all(r + 0x20, 16, 0x1a),
          "family ID and image ID from the ID block");
    check(snp_get_le32(r + 0x30) == vmpl, "VMPL %u as requested", vmpl);
    check(snp_get_le32(r + 0x34) == 1, "signature algorithm 1 (ECDSA P-384)");
    check(snp_get_le64(r + 0x38) == TCB_WANT, "CURRENT_TCB 0x%016" PRIx64,
          snp_get_le64(r + 0x38));
    check(snp_get_le64(r + 0x40) == 1, "PLATFORM_INFO: SMT_EN");
    check(snp_get_le32(r + 0x48) == 1,
          "flags: AUTHOR_KEY_EN, MASK_CHIP_ID clear, SIGNING_KEY 0 (VCEK)");
    check(memcmp(r + 0x50, data, 64) == 0, "REPORT_DATA as requested");
    check(memcmp(r + 0x90, g->measurement, 48) == 0 &&
          memcmp(r + 0xC0, g->host_data, 32) == 0,
          "MEASUREMENT and HOST_DATA");
    check(is_all(r + 0xE0, 48, 0x1d) && is_all(r + 0x110, 48, 0xad),
          "ID_KEY_DIGEST and AUTHOR_KEY_DIGEST");
    check(!is_zero(r + 0x140, 32) && is_all(r + 0x160, 32, 0xff),
          "REPORT_ID set, REPORT_ID_MA all ones (no migration agent)");
    check(snp_get_le64(r + 0x180) == TCB_WANT, "REPORTED_TCB = snp_chip_tcb");
    check(r[0x188] == 0x19 && r[0x189] == 0x01 && r[0x18A] == 1,
          "CPUID family 19h, model 1, stepping 1 (from 0x%08x)",
          g->cpuid_fms);
    check(!is_zero(r + 0x1A0, 64), "CHIP_ID set");
    check(snp_get_le64(r + 0x1E0) == TCB_WANT && snp_get_le64(r + 0x1F0) == TCB_WANT,
          "COMMITTED_TCB and LAUNCH_TCB");
    check(r[0x1EA] == 1 && r[0x1E9] == 55 && r[0x1E8] == 21 &&
          memcmp(r + 0x1E8, r + 0x1EC, 3) == 0,
          "current and committed firmware 1.55 build 21");
    check(is_zero(r + 0x2A0 + 48, 24) && is_zero(r + 0x2E8 + 48, 24) &&
          !is_zero(r + 0x2A0, 48) && !is_zero(r + 0x2E8, 48) &&
          is_zero(r + 0x330, REPORT_LEN - 0x330),
          "signature: R and S in the low 48 bytes of their 72-byte fields");
}

/* A refused request: the firmware error, `resp` and the seqnos untouched. */
static void refused(const SnpChip *chip, SnpGuestInfo *g,
                    const uint8_t req[SNP_PAGE_SIZE], uint32_t want,
                    const char *what)
{
    uint8_t resp[SNP_PAGE_SIZE], sentinel[SNP_PAGE_SIZE];
    uint64_t seq[4];
    char log[256] = "";
    uint32_t fw;

    memset(resp, 0xee, sizeof(resp));
    memcpy(sentinel, resp, sizeof(resp));
    memcpy(seq, g->seqno, sizeof(seq));
    fw = snp_guest_request(chip, g, NULL, req, resp, log, sizeof(log));
    check(fw == want && memcmp(resp, sentinel, sizeof(resp)) == 0 &&
          memcmp(seq, g->seqno, sizeof(seq)) == 0 && log[0],
          "refused, %s: firmware error 0x%x, response and sequence numbers "
          "untouched (\"%s\")", what, fw, log);
}

static void test_requests(void)
{
    char err[512] = "";
    SnpChip *chip = snp_chip_new(NULL, err, sizeof(err));
    SnpGuestInfo g;
    uint8_t data[64], rsp[RSP_LEN], rsp2[RSP_LEN], first[SNP_PAGE_SIZE];
    uint8_t req[SNP_PAGE_SIZE], resp[SNP_PAGE_SIZE], p[96];
    SnpAttestFaults lie = { .other_report_data = true };
    char log[256];
    uint32_t fw;

    printf("-- guest requests (a chip without a certificate directory)\n");
    check(chip != NULL, "snp_chip_new(NULL) %s", err);
    if (!chip) {
        return;
    }
    check(snp_chip_tcb(chip) == TCB_WANT,
          "TCB 0x%016" PRIx64 ": bootloader 3, TEE 0, SNP 8, microcode 115 "
          "(Milan layout)", snp_chip_tcb(chip));
    guest_init(&g);
    RAND_bytes(data, sizeof(data));

    /* The first request: seqno 1, response 2. */
    seal_report(first, g.vmpck[0], 1, 0, data, 0);
    fw = snp_guest_request(chip, &g, NULL, first, resp, log, sizeof(log));
    check(fw == 0 && open_resp(resp, g.vmpck[0], 1, 0, rsp),
          "MSG_REPORT_REQ seqno 1 answered with MSG_REPORT_RSP seqno 2 "
          "under VMPCK0 (\"%s\")", log);
    check(g.seqno[0] == 2 && g.seqno[1] == 0,
          "VMPCK0's sequence number is now 2 (the response's)");
    test_report_fields(&g, rsp, data, 0);

    /* Refusals: nothing moves. */
    refused(chip, &g, first, SNP_FW_INVALID_PARAM,
            "the same request again (replay of seqno 1)");
    seal_report(req, g.vmpck[0], 2, 0, data, 0);
    refused(chip, &g, req, SNP_FW_INVALID_PARAM,
            "seqno 2 (the response's, not last + 1)");
    seal_report(req, g.vmpck[0], 5, 0, data, 0);
    refused(chip, &g, req, SNP_FW_INVALID_PARAM, "skipped seqno 5");

    seal_report(req, g.vmpck[0], 3, 0, data, 0);
    memcpy(first, req, sizeof(req));    /* the intact request, kept */
    req[SNP_MSG_HDR_LEN + 17] ^= 0x01;
    refused(chip, &g, req, SNP_FW_INVALID_PARAM, "altered ciphertext");
    memcpy(req, first, sizeof(req));
    req[5] ^= 0x40;
    refused(chip, &g, req, SNP_FW_INVALID_PARAM, "altered tag");
    memcpy(req, first, sizeof(req));
    req[0x3D] ^= 0x01;
    refused(chip, &g, req, SNP_FW_INVALID_PARAM,
            "altered header (a reserved byte of the AAD)");
    memcpy(req, first, sizeof(req));
    req[SNP_MSG_TYPE] = 3;
    refused(chip, &g, req, SNP_FW_INVALID_PARAM,
            "header altered to MSG_KEY_REQ (authenticated type)");
    memcpy(req, first, sizeof(req));
    req[SNP_MSG_ALGO] = 2;
    refused(chip, &g, req, SNP_FW_INVALID_PARAM, "algorithm 2");
    memcpy(req, first, sizeof(req));
    req[SNP_MSG_HDR_VERSION] = 2;
    refused(chip, &g, req, SNP_FW_INVALID_PARAM, "header version 2");
    memcpy(req, first, sizeof(req));
    snp_put_le16(req + SNP_MSG_HDR_SIZE, 0x50);
    refused(chip, &g, req, SNP_FW_INVALID_PARAM, "header size 0x50");
    memcpy(req, first, sizeof(req));
    req[SNP_MSG_VMPCK] = 4;
    refused(chip, &g, req, SNP_FW_INVALID_PARAM, "VMPCK4");
    memcpy(req, first, sizeof(req));
    snp_put_le16(req + SNP_MSG_SIZE, SNP_PAGE_SIZE - SNP_MSG_HDR_LEN + 1);
    refused(chip, &g, req, SNP_FW_INVALID_PARAM,
            "message size 4001 (larger than the page)");

    seal_report(req, g.vmpck[1], 3, 0, data, 0);
    refused(chip, &g, req, SNP_FW_INVALID_PARAM,
            "sealed with VMPCK1's key, header names VMPCK0");
    seal_report(req, g.vmpck[0], 1, 1, data, 0);
    refused(chip, &g, req, SNP_FW_INVALID_PARAM,
            "sealed with VMPCK0's key, header names VMPCK1");

    report_req(p, data, 0, 0);
    seal(req, g.vmpck[0], 3, 3, 1, 0, p, sizeof(p));
    refused(chip, &g, req, SNP_FW_INVALID_PARAM, "MSG_KEY_REQ (not emulated)");
    seal(req, g.vmpck[0], 3, 42, 1, 0, p, sizeof(p));
    refused(chip, &g, req, SNP_FW_INVALID_PARAM, "unknown message type 42");
    seal(req, g.vmpck[0], 3, 6, 1, 0, p, sizeof(p));
    refused(chip, &g, req, SNP_FW_INVALID_PARAM,
            "MSG_REPORT_RSP sent as a request");
    seal(req, g.vmpck[0], 3, 5, 2, 0, p, sizeof(p));
    refused(chip, &g, req, SNP_FW_INVALID_PARAM, "MSG_REPORT_REQ version 2");
    seal(req, g.vmpck[0], 3, 5, 1, 0, p, 64);
    refused(chip, &g, req, SNP_FW_INVALID_PARAM,
            "MSG_REPORT_REQ of 64 bytes");

    g.vmpck_disabled[0] = true;
    refused(chip, &g, first, SNP_FW_INVALID_PARAM, "VMPCK0 disabled");
    g.vmpck_disabled[0] = false;

    g.seqno[2] = UINT64_MAX - 1;
    seal_report(req, g.vmpck[2], UINT64_MAX, 2, data, 0);
    refused(chip, &g, req, SNP_FW_AEAD_OFLOW,
            "VMPCK2's sequence numbers exhausted");
    g.seqno[2] = 0;

    /* After all that, the guest resends the intact request: accepted. */
    fw = snp_guest_request(chip, &g, NULL, first, resp, log, sizeof(log));
    check(fw == 0 && open_resp(resp, g.vmpck[0], 3, 0, rsp2) &&
          g.seqno[0] == 4,
          "the same sealed request (seqno 3) resent after the refusals is "
          "answered; sequence number 4");
    check(memcmp(rsp2 + 0x20 + 0x140, rsp + 0x20 + 0x140, 32) == 0 &&
          memcmp(rsp2 + 0x20 + 0x1A0, rsp + 0x20 + 0x1A0, 64) == 0,
          "REPORT_ID and CHIP_ID are the same for the same guest");

    /* Each VMPCK has its own sequence; VMPL 0..3 may be requested. */
    check(exchange(chip, &g, NULL, 1, 1, data, 3, rsp2) && g.seqno[1] == 2 &&
          g.seqno[0] == 4 && snp_get_le32(rsp2 + 0x20 + 0x30) == 3,
          "VMPCK1 starts its own sequence at 1; a VMPL 3 report");
    check(exchange(chip, &g, NULL, 0, 5, data, 2, rsp2) &&
          snp_get_le32(rsp2 + 0x20 + 0x30) == 2 && g.seqno[0] == 6,
          "a VMPL 2 report under VMPCK0, seqno 5");

    /* Parsed but not honoured: status INVALID_PARAM inside the response. */
    check(exchange(chip, &g, NULL, 0, 7, data, 4, rsp2) &&
          snp_get_le32(rsp2) == SNP_FW_INVALID_PARAM && snp_get_le32(rsp2 + 4) == 0 &&
          is_zero(rsp2 + 0x20, REPORT_LEN) && g.seqno[0] == 8,
          "VMPL 4: answered, MSG_REPORT_RSP status 0x16 and no report");
    report_req(p, data, 0, 2);
    seal(req, g.vmpck[0], 9, 5, 1, 0, p, sizeof(p));
    fw = snp_guest_request(chip, &g, NULL, req, resp, log, sizeof(log));
    check(fw == 0 && open_resp(resp, g.vmpck[0], 9, 0, rsp2) &&
          snp_get_le32(rsp2) == SNP_FW_INVALID_PARAM && g.seqno[0] == 10,
          "KEY_SEL 2 (VLEK, none installed): status 0x16 (\"%s\")", log);

    /* A lying firmware: REPORT_DATA other than the request's. */
    check(exchange(chip, &g, &lie, 0, 11, data, 0, rsp2) &&
          memcmp(rsp2 + 0x20 + 0x50, data, 64) != 0,
          "fault other_report_data: the report carries other REPORT_DATA");

    /* A chip without a directory has its own chip ID. */
    {
        SnpChip *other = snp_chip_new(NULL, err, sizeof(err));
        SnpGuestInfo g2;

        guest_init(&g2);
        check(other && exchange(other, &g2, NULL, 0, 1, data, 0, rsp2) &&
              memcmp(rsp2 + 0x20 + 0x1A0, rsp + 0x20 + 0x1A0, 64) != 0,
              "another chip: another CHIP_ID");
        snp_chip_free(other);
    }
    snp_chip_free(chip);
}

/* ------------------------------------------------------------ certificates */

static X509 *read_cert(const char *dir, const char *name)
{
    char path[4096];
    BIO *in;
    X509 *x = NULL;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    in = BIO_new_file(path, "r");
    if (in) {
        x = PEM_read_bio_X509(in, NULL, NULL, NULL);
        BIO_free(in);
    }
    return x;
}

/* RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt. */
static bool pss_sha384_48(X509 *x)
{
    const X509_ALGOR *alg;
    const ASN1_OBJECT *oid;
    const void *pval;
    int ptype;
    RSA_PSS_PARAMS *pss = NULL;
    X509_ALGOR *mgf_hash = NULL;
    bool ok;

    X509_get0_signature(NULL, &alg, x);
    X509_ALGOR_get0(&oid, &ptype, &pval, alg);
    if (OBJ_obj2nid(oid) != NID_rsassaPss || ptype != V_ASN1_SEQUENCE) {
        return false;
    }
    pss = ASN1_item_unpack(pval, ASN1_ITEM_rptr(RSA_PSS_PARAMS));
    ok = pss && pss->hashAlgorithm && pss->maskGenAlgorithm &&
         OBJ_obj2nid(pss->hashAlgorithm->algorithm) == NID_sha384 &&
         OBJ_obj2nid(pss->maskGenAlgorithm->algorithm) == NID_mgf1 &&
         pss->saltLength && ASN1_INTEGER_get(pss->saltLength) == 48;
    if (ok) {
        const ASN1_OBJECT *moid;
        const void *mval;
        int mtype;

        X509_ALGOR_get0(&moid, &mtype, &mval, pss->maskGenAlgorithm);
        mgf_hash = mtype == V_ASN1_SEQUENCE ?
                   ASN1_item_unpack(mval, ASN1_ITEM_rptr(X509_ALGOR)) : NULL;
        ok = mgf_hash && OBJ_obj2nid(mgf_hash->algorithm) == NID_sha384;
    }
    X509_ALGOR_free(mgf_hash);
    RSA_PSS_PARAMS_free(pss);
    return ok;
}

/* The DER value of the VCEK extension `oid`, or NULL. */
static const ASN1_OCTET_STRING *ext_value(X509 *x, const char *oid)
{
    ASN1_OBJECT *o = OBJ_txt2obj(oid, 1);
    int at = o ? X509_get_ext_by_OBJ(x, o, -1) : -1;

    ASN1_OBJECT_free(o);
    return at < 0 ? NULL : X509_EXTENSION_get_data(X509_get_ext(x, at));
}

static bool ext_is(X509 *x, const char *oid, const uint8_t *der, size_t len)
{
    const ASN1_OCTET_STRING *v = ext_value(x, oid);

    return v && (size_t)ASN1_STRING_length(v) == len &&
           memcmp(ASN1_STRING_get0_data(v), der, len) == 0;
}

/* SHA-256 of the ARK's SubjectPublicKeyInfo (DER), hex: --trust-ark. */
static bool ark_spki_sha256(X509 *ark, char hex[65])
{
    unsigned char *der = NULL, md[32];
    unsigned int mdlen = 0;
    int len = i2d_PUBKEY(X509_get0_pubkey(ark), &der);
    bool ok = len > 0 && EVP_Digest(der, len, md, &mdlen, EVP_sha256(),
                                    NULL) == 1 && mdlen == 32;

    OPENSSL_free(der);
    if (ok) {
        tohex(md, 32, hex);
    }
    return ok;
}

static bool mode_is(const char *dir, const char *name, mode_t mode)
{
    char path[4096];
    struct stat st;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return stat(path, &st) == 0 && (st.st_mode & 0777) == mode;
}

/* `image verify --report`: its exit status, and its output in `out`. */
static int image_verify(char *out, size_t outlen, const char *report,
                        const char *dir, const char *ark_sha,
                        const uint8_t measurement[48], const uint8_t data[64])
{
    char m[97], d[129];

    tohex(measurement, 48, m);
    tohex(data, 64, d);
    return run(out, outlen,
               "cargo run -q -p vellum-image -- verify --report '%s' "
               "--certs '%s' --trust-ark %s --measurement %s "
               "--report-data %s", report, dir, ark_sha, m, d);
}

static void test_certs(void)
{
    char tmpl[] = "/tmp/vellum-test-attest-XXXXXX";
    char *dir = mkdtemp(tmpl);
    char err[512] = "", path[1024], path2[4096], sha[65] = "", out[8192];
    SnpChip *chip;
    SnpGuestInfo g;
    X509 *ark = NULL, *ask = NULL, *vcek = NULL, *vcek2 = NULL;
    uint8_t data[64], rsp[RSP_LEN], rsp2[RSP_LEN], bad[REPORT_LEN];
    uint8_t tcb_der[][3] = {
        { 2, 1, 3 }, { 2, 1, 0 }, { 2, 1, 8 }, { 2, 1, 115 },
    };
    const char *tcb_oid[] = {
        "1.3.6.1.4.1.3704.1.3.1", "1.3.6.1.4.1.3704.1.3.2",
        "1.3.6.1.4.1.3704.1.3.3", "1.3.6.1.4.1.3704.1.3.8",
    };
    SnpAttestFaults lie = { .other_report_data = true };
    bool ok;
    int st;

    printf("-- a chip with a certificate directory\n");
    if (!dir) {
        check(false, "mkdtemp");
        return;
    }
    /* A new directory: RSA-4096 ARK and ASK keys are made (seconds). */
    snprintf(path, sizeof(path), "%s/chip", dir);
    chip = snp_chip_new(path, err, sizeof(err));
    check(chip != NULL, "snp_chip_new(%s) %s", path, err);
    if (!chip) {
        goto out;
    }
    ark = read_cert(path, "ark.pem");
    ask = read_cert(path, "ask.pem");
    vcek = read_cert(path, "vcek.pem");
    check(ark && ask && vcek, "ark.pem, ask.pem and vcek.pem written");
    check(mode_is(path, "private", 0700) &&
          mode_is(path, "private/ark.key", 0600) &&
          mode_is(path, "private/ask.key", 0600) &&
          mode_is(path, "private/vcek.key", 0600) &&
          mode_is(path, "private/chip_id.hex", 0600),
          "private/ (0700) holds ark.key, ask.key, vcek.key, chip_id.hex "
          "(0600)");
    if (!ark || !ask || !vcek) {
        goto out;
    }

    /* The chain, as AMD's KDS issues it. */
    check(X509_verify(ark, X509_get0_pubkey(ark)) == 1 &&
          X509_verify(ask, X509_get0_pubkey(ark)) == 1 &&
          X509_verify(vcek, X509_get0_pubkey(ask)) == 1 &&
          X509_verify(vcek, X509_get0_pubkey(ark)) != 1,
          "ARK self-signed, ARK signs ASK, ASK signs VCEK");
    check(pss_sha384_48(ark) && pss_sha384_48(ask) && pss_sha384_48(vcek),
          "RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48, on all three");
    check(EVP_PKEY_is_a(X509_get0_pubkey(ark), "RSA") &&
          EVP_PKEY_get_bits(X509_get0_pubkey(ark)) == 4096 &&
          EVP_PKEY_get_bits(X509_get0_pubkey(ask)) == 4096 &&
          EVP_PKEY_is_a(X509_get0_pubkey(vcek), "EC") &&
          EVP_PKEY_get_bits(X509_get0_pubkey(vcek)) == 384,
          "ARK and ASK RSA-4096, VCEK P-384");
    check(X509_check_issued(ark, ark) == X509_V_OK &&
          X509_check_issued(ark, ask) == X509_V_OK &&
          X509_check_issued(ask, vcek) == X509_V_OK &&
          X509_check_ca(ark) && X509_check_ca(ask) && !X509_check_ca(vcek),
          "issuer names and CA flags: ARK and ASK are CAs, the VCEK is not");
    check(X509_cmp_current_time(X509_get0_notBefore(vcek)) < 0 &&
          X509_cmp_current_time(X509_get0_notAfter(vcek)) > 0 &&
          X509_cmp_current_time(X509_get0_notAfter(ark)) > 0,
          "valid now");
    {
        char cn[64] = "";

        X509_NAME_get_text_by_NID(X509_get_subject_name(ark),
                                  NID_commonName, cn, sizeof(cn));
        check(strcmp(cn, "ARK-Milan") == 0, "ARK CN=%s", cn);
        X509_NAME_get_text_by_NID(X509_get_subject_name(vcek),
                                  NID_commonName, cn, sizeof(cn));
        check(strcmp(cn, "SEV-VCEK") == 0, "VCEK CN=%s", cn);
    }
    ok = ext_is(vcek, "1.3.6.1.4.1.3704.1.2",
                (const uint8_t *)"\x16\x08Milan-B0", 10);
    for (int i = 0; i < 4; i++) {
        ok &= ext_is(vcek, tcb_oid[i], tcb_der[i], 3);
    }
    check(ok, "VCEK extensions: product Milan-B0 (IA5String), TCB SPLs "
          "3, 0, 8, 115 (INTEGER)");

    /* A report from this chip. */
    guest_init(&g);
    RAND_bytes(data, sizeof(data));
    check(exchange(chip, &g, NULL, 0, 1, data, 0, rsp),
          "a report from the chip with certificates");
    {
        const ASN1_OCTET_STRING *hw = ext_value(vcek, "1.3.6.1.4.1.3704.1.4");

        check(hw && ASN1_STRING_length(hw) == 64 &&
              memcmp(ASN1_STRING_get0_data(hw), rsp + 0x20 + 0x1A0, 64) == 0,
              "VCEK hwID extension = the report's CHIP_ID (64 raw bytes)");
    }
    check(report_sig_ok(X509_get0_pubkey(vcek), rsp + 0x20),
          "the report signature verifies with vcek.pem");
    memcpy(bad, rsp + 0x20, REPORT_LEN);
    bad[0xC0] ^= 0x01;
    check(!report_sig_ok(X509_get0_pubkey(vcek), bad),
          "one signed byte changed: the signature does not verify");
    memcpy(bad, rsp + 0x20, REPORT_LEN);
    bad[0x2E8 + 3] ^= 0x01;
    check(!report_sig_ok(X509_get0_pubkey(vcek), bad),
          "one signature byte changed: it does not verify");
    check(!report_sig_ok(X509_get0_pubkey(ark), rsp + 0x20),
          "the ARK's key does not verify it");

    /* The repository's verifier, offline (image verify --report). */
    check(ark_spki_sha256(ark, sha), "ARK SPKI SHA-256 %s", sha);
    snprintf(path2, sizeof(path2), "%s/report.bin", dir);
    write_file(path2, rsp + 0x20, REPORT_LEN);
    st = image_verify(out, sizeof(out), path2, path, sha, g.measurement,
                      data);
    check(st == 0 && strstr(out, "result: VERIFIED"),
          "`image verify --report` accepts the report (exit %d)", st);
    if (st != 0) {
        printf("%s\n", out);
    }
    memcpy(bad, rsp + 0x20, REPORT_LEN);
    bad[0xC0] ^= 0x01;     /* HOST_DATA: only the signature covers it */
    write_file(path2, bad, REPORT_LEN);
    st = image_verify(out, sizeof(out), path2, path, sha, g.measurement,
                      data);
    check(st != 0 && strstr(out, "FAIL  signature"),
          "... and refuses it with one signed byte flipped (exit %d)", st);
    memcpy(bad, rsp + 0x20, REPORT_LEN);
    bad[0x2A0 + 7] ^= 0x10;
    write_file(path2, bad, REPORT_LEN);
    st = image_verify(out, sizeof(out), path2, path, sha, g.measurement,
                      data);
    check(st != 0 && strstr(out, "FAIL  signature"),
          "... and with one signature byte flipped (exit %d)", st);
    write_file(path2, rsp + 0x20, REPORT_LEN);
    st = image_verify(out, sizeof(out), path2, path,
                      "00112233445566778899aabbccddeeff"
                      "00112233445566778899aabbccddeeff",
                      g.measurement, data);
    check(st != 0 && strstr(out, "FAIL  chain"),
          "... and with another ARK trusted (exit %d)", st);
    check(exchange(chip, &g, &lie, 0, 3, data, 0, rsp2),
          "a report with the other_report_data fault");
    write_file(path2, rsp2 + 0x20, REPORT_LEN);
    st = image_verify(out, sizeof(out), path2, path, sha, g.measurement,
                      data);
    check(st != 0 && strstr(out, "FAIL  report_data") &&
          strstr(out, "ok    signature"),
          "... which is genuinely signed but refused for its REPORT_DATA "
          "(exit %d)", st);
    snp_chip_free(chip);
    chip = NULL;

    /* Loading the directory again: the same machine. */
    snprintf(path2, sizeof(path2), "%s/ark-before.pem", dir);
    {
        char arkpem[4096];
        size_t len;
        uint8_t *pem;

        snprintf(arkpem, sizeof(arkpem), "%s/ark.pem", path);
        pem = read_file(arkpem, &len);
        write_file(path2, pem, len);
        free(pem);
        chip = snp_chip_new(path, err, sizeof(err));
        check(chip != NULL, "snp_chip_new(%s) again %s", path, err);
        check(chip && same_file(arkpem, path2),
              "the existing certificates are kept");
    }
    if (!chip) {
        goto out;
    }
    guest_init(&g);
    check(exchange(chip, &g, NULL, 0, 1, data, 0, rsp2) &&
          memcmp(rsp2 + 0x20 + 0x1A0, rsp + 0x20 + 0x1A0, 64) == 0 &&
          report_sig_ok(X509_get0_pubkey(vcek), rsp2 + 0x20),
          "the loaded chip has the same CHIP_ID and VCEK");
    snp_chip_free(chip);

    /* A missing certificate is issued again, for the same keys. */
    snprintf(path2, sizeof(path2), "%s/vcek.pem", path);
    remove(path2);
    chip = snp_chip_new(path, err, sizeof(err));
    vcek2 = read_cert(path, "vcek.pem");
    check(chip && vcek2 &&
          EVP_PKEY_eq(X509_get0_pubkey(vcek), X509_get0_pubkey(vcek2)) == 1,
          "vcek.pem removed: issued again for the same VCEK %s", err);
    {
        X509 *ark2 = read_cert(path, "ark.pem");
        char sha2[65] = "";

        check(ark2 && ark_spki_sha256(ark2, sha2) && strcmp(sha, sha2) == 0,
              "the ARK key (and --trust-ark) is unchanged");
        X509_free(ark2);
    }

    /* A damaged key file is an error that says what to do. */
    snp_chip_free(chip);
    chip = NULL;
    snprintf(path2, sizeof(path2), "%s/private/vcek.key", path);
    write_file(path2, (const uint8_t *)"not a key\n", 10);
    chip = snp_chip_new(path, err, sizeof(err));
    check(!chip && strstr(err, "vcek.key"), "a damaged vcek.key: \"%s\"",
          err);

out:
    snp_chip_free(chip);
    X509_free(ark);
    X509_free(ask);
    X509_free(vcek);
    X509_free(vcek2);
    run(NULL, 0, "rm -rf '%s'", dir);
}

int main(void)
{
    test_requests();
    test_certs();
    printf("test-attest: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
