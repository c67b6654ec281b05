/*
 * Vellum emulated SEV-SNP platform: launch measurement, VMSA, ID block check
 * and secrets page (the "launch" and "secrets" parts of snp-emu-pure.h).
 *
 * This is the emulated AMD-SP's side of SNP_LAUNCH_UPDATE and
 * SNP_LAUNCH_FINISH. Sources of the facts used here:
 *  - SNP firmware ABI (AMD 56860) §8.17 SNP_LAUNCH_UPDATE and §8.17.2
 *    "PAGE_INFO"; §8.18 SNP_LAUNCH_FINISH, "ID Block" and "ID
 *    Authentication Information"; chapter 10 "Digital Signatures"; the
 *    "Secrets Page" layout;
 *  - AMD APM vol. 2 (24593) appendix B, table B-4 "VMSA Layout, State Save
 *    Area for SEV-ES";
 *  - Vellum's docs/snp-reference.md §3 and §5.1, and the
 *    repository's Rust measurement (image/src/snp/), which this file must
 *    agree with byte for byte.
 *
 * Only libc and OpenSSL 3.0 libcrypto (EVP interfaces) are used, so this file
 * builds both inside QEMU and in snp-platform/tests/.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <stdio.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "snp-emu-pure.h"

#define SNP_DIGEST_LEN 48

/* ---------------------------------------------------------------- helpers */






static bool all_zero(const uint8_t *p, size_t len)
{
    uint8_t acc = 0;

    for (size_t i = 0; i < len; i++) {
        acc |= p[i];
    }
    return acc == 0;
}

static void hex48(char out[2 * SNP_DIGEST_LEN + 1], const uint8_t *d)
{
    static const char digits[] = "0123456789abcdef";

    for (int i = 0; i < SNP_DIGEST_LEN; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 0xf];
    }
    out[2 * SNP_DIGEST_LEN] = '\0';
}

static int sha384(const uint8_t *data, size_t len, uint8_t out[SNP_DIGEST_LEN])
{
    unsigned int outlen = 0;

    if (EVP_Digest(data, len, out, &outlen, EVP_sha384(), NULL) != 1 ||
        outlen != SNP_DIGEST_LEN) {
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- launch */

/*
 * PAGE_INFO (56860 §8.17.2), 0x70 bytes:
 *   0x00 DIGEST_CUR[48]   the launch digest so far
 *   0x30 CONTENTS[48]     SHA-384 of the page (NORMAL, VMSA), else zero
 *   0x60 u16 LENGTH       0x70
 *   0x62 u8 PAGE_TYPE
 *   0x63 u8 IMI_PAGE      0: no incoming migration image
 *   0x64 u8 VMPL3_PERMS, 0x65 VMPL2_PERMS, 0x66 VMPL1_PERMS: 0 (VMPL0 launch)
 *   0x67 u8 reserved
 *   0x68 u64 GPA
 * The new digest is SHA-384(PAGE_INFO); it starts as 48 zero bytes.
 */
#define PI_DIGEST_CUR 0x00
#define PI_CONTENTS 0x30
#define PI_LENGTH 0x60
#define PI_PAGE_TYPE 0x62
#define PI_GPA 0x68
#define PI_LEN 0x70

/*
 * KVM hands each VMSA to SNP_LAUNCH_UPDATE with an all-ones GFN, so the
 * firmware records GPA 0xFFFFFFFFF000 (all ones, page aligned, 52 bits) for
 * every VMSA page (docs/snp-reference.md §3.1; sev-snp-measure and the Rust
 * measurement agree).
 */
#define SNP_VMSA_GPA 0xFFFFFFFFF000ULL

void snp_ld_init(SnpLaunchDigest *d)
{
    memset(d->ld, 0, sizeof(d->ld));
}

/*
 * Besides a failed hash, -1 is also returned (and the digest left untouched)
 * for arguments the firmware would refuse: an unknown page type, a GPA that
 * is not 4 KiB aligned, or no contents for a NORMAL or VMSA page. For VMSA
 * pages `gpa` is ignored and SNP_VMSA_GPA is measured, as KVM does.
 */
int snp_ld_update(SnpLaunchDigest *d, uint64_t gpa, int page_type,
                  const uint8_t *contents)
{
    uint8_t info[PI_LEN];
    uint8_t next[SNP_DIGEST_LEN];

    memset(info, 0, sizeof(info));
    switch (page_type) {
    case SNP_PAGE_NORMAL:
    case SNP_PAGE_VMSA:
        if (!contents) {
            return -1;
        }
        if (sha384(contents, SNP_PAGE_SIZE, info + PI_CONTENTS) < 0) {
            return -1;
        }
        if (page_type == SNP_PAGE_VMSA) {
            gpa = SNP_VMSA_GPA;
        }
        break;
    case SNP_PAGE_ZERO:
    case SNP_PAGE_UNMEASURED:
    case SNP_PAGE_SECRETS:
    case SNP_PAGE_CPUID:
        /* CONTENTS stays zero (56860 §8.17.2). */
        break;
    default:
        return -1;
    }
    if (gpa & (SNP_PAGE_SIZE - 1)) {
        return -1;
    }

    memcpy(info + PI_DIGEST_CUR, d->ld, SNP_DIGEST_LEN);
    snp_put_le16(info + PI_LENGTH, PI_LEN);
    info[PI_PAGE_TYPE] = page_type;
    /* IMI_PAGE, VMPL3/2/1_PERMS and the reserved byte stay zero. */
    snp_put_le64(info + PI_GPA, gpa);

    if (sha384(info, sizeof(info), next) < 0) {
        return -1;
    }
    memcpy(d->ld, next, SNP_DIGEST_LEN);
    return 0;
}

/*
 * VMSA offsets (APM vol. 2 table B-4). Segment registers use the VMCB
 * segment format: u16 selector, u16 attrib, u32 limit, u64 base (16 bytes).
 */
#define VMSA_ES 0x000
#define VMSA_CS 0x010
#define VMSA_SS 0x020
#define VMSA_DS 0x030
#define VMSA_FS 0x040
#define VMSA_GS 0x050
#define VMSA_GDTR 0x060
#define VMSA_LDTR 0x070
#define VMSA_IDTR 0x080
#define VMSA_TR 0x090
#define VMSA_VMPL 0x0CA
#define VMSA_CPL 0x0CB
#define VMSA_EFER 0x0D0
#define VMSA_XSS 0x140
#define VMSA_CR4 0x148
#define VMSA_CR3 0x150
#define VMSA_CR0 0x158
#define VMSA_DR7 0x160
#define VMSA_DR6 0x168
#define VMSA_RFLAGS 0x170
#define VMSA_RIP 0x178
#define VMSA_RSP 0x1D8
#define VMSA_RAX 0x1F8
#define VMSA_G_PAT 0x268
#define VMSA_RCX 0x308
#define VMSA_RDX 0x310
#define VMSA_RBX 0x318
#define VMSA_RBP 0x328
#define VMSA_RSI 0x330
#define VMSA_RDI 0x338
#define VMSA_SEV_FEATURES 0x3B0
#define VMSA_XCR0 0x3E8
#define VMSA_MXCSR 0x408
#define VMSA_X87_FCW 0x410

static void put_seg(uint8_t *page, size_t off, const SnpVmsaSeg *seg)
{
    snp_put_le16(page + off + 0x0, seg->selector);
    snp_put_le16(page + off + 0x2, seg->attrib);
    snp_put_le32(page + off + 0x4, seg->limit);
    snp_put_le64(page + off + 0x8, seg->base);
}

void snp_vmsa_build(const SnpVmsaState *s, uint8_t page[SNP_PAGE_SIZE])
{
    memset(page, 0, SNP_PAGE_SIZE);

    put_seg(page, VMSA_ES, &s->es);
    put_seg(page, VMSA_CS, &s->cs);
    put_seg(page, VMSA_SS, &s->ss);
    put_seg(page, VMSA_DS, &s->ds);
    put_seg(page, VMSA_FS, &s->fs);
    put_seg(page, VMSA_GS, &s->gs);
    put_seg(page, VMSA_GDTR, &s->gdtr);
    put_seg(page, VMSA_LDTR, &s->ldtr);
    put_seg(page, VMSA_IDTR, &s->idtr);
    put_seg(page, VMSA_TR, &s->tr);

    /* The launch VMSAs run at VMPL0 and, out of reset, at CPL 0. */
    page[VMSA_VMPL] = 0;
    page[VMSA_CPL] = 0;

    snp_put_le64(page + VMSA_EFER, s->efer);
    snp_put_le64(page + VMSA_XSS, s->xss);
    snp_put_le64(page + VMSA_CR4, s->cr4);
    snp_put_le64(page + VMSA_CR3, s->cr3);
    snp_put_le64(page + VMSA_CR0, s->cr0);
    snp_put_le64(page + VMSA_DR7, s->dr7);
    snp_put_le64(page + VMSA_DR6, s->dr6);
    snp_put_le64(page + VMSA_RFLAGS, s->rflags);
    snp_put_le64(page + VMSA_RIP, s->rip);
    snp_put_le64(page + VMSA_RSP, s->rsp);
    snp_put_le64(page + VMSA_RAX, s->rax);
    snp_put_le64(page + VMSA_G_PAT, s->g_pat);
    snp_put_le64(page + VMSA_RCX, s->rcx);
    snp_put_le64(page + VMSA_RDX, s->rdx);
    snp_put_le64(page + VMSA_RBX, s->rbx);
    snp_put_le64(page + VMSA_RBP, s->rbp);
    snp_put_le64(page + VMSA_RSI, s->rsi);
    snp_put_le64(page + VMSA_RDI, s->rdi);
    snp_put_le64(page + VMSA_SEV_FEATURES, s->sev_features);
    snp_put_le64(page + VMSA_XCR0, s->xcr0);
    snp_put_le32(page + VMSA_MXCSR, s->mxcsr);
    snp_put_le16(page + VMSA_X87_FCW, s->x87_fcw);
}

/* ---------------------------------------------------------------- ID block */

/* ID block (56860 §8.18, "ID Block"), 96 bytes. */
#define IDB_LEN 0x60
#define IDB_LD 0x00
#define IDB_FAMILY_ID 0x30
#define IDB_IMAGE_ID 0x40
#define IDB_VERSION 0x50
#define IDB_GUEST_SVN 0x54
#define IDB_POLICY 0x58
#define IDB_VERSION_1 1

/* ID authentication information (56860 §8.18), 4096 bytes. */
#define IDA_LEN 0x1000
#define IDA_ID_KEY_ALGO 0x000
#define IDA_AUTH_KEY_ALGO 0x004
#define IDA_ID_BLOCK_SIG 0x040
#define IDA_ID_KEY 0x240
#define IDA_ID_KEY_SIG 0x680
#define IDA_AUTHOR_KEY 0x880

/*
 * Signatures and public keys (56860 chapter 10): algorithm 1 is ECDSA P-384
 * with SHA-384. A signature is R[72] | S[72], little-endian and zero padded,
 * in a 512-byte field; a public key is u32 CURVE (2 = P-384) | QX[72] |
 * QY[72], little-endian and zero padded, in a 0x404-byte field whose SHA-384
 * is the key digest the attestation report carries.
 */
#define SNP_ALGO_ECDSA_P384_SHA384 1
#define SNP_CURVE_P384 2
#define ECC_PARAM_LEN 72
#define P384_LEN 48
#define SIG_R 0x00
#define SIG_S 0x48
#define SIG_LEN 0x200
#define KEY_CURVE 0x00
#define KEY_QX 0x04
#define KEY_QY 0x4C
#define KEY_LEN 0x404

/* A 72-byte little-endian parameter that must fit in P-384's 48 bytes. */
static bool le_param_to_be48(const uint8_t *field, uint8_t out[P384_LEN])
{
    if (!all_zero(field + P384_LEN, ECC_PARAM_LEN - P384_LEN)) {
        return false;
    }
    for (int i = 0; i < P384_LEN; i++) {
        out[i] = field[P384_LEN - 1 - i];
    }
    return true;
}

/* The EVP_PKEY for a public key structure, or NULL if it is not a P-384 key. */
static EVP_PKEY *snp_pubkey(const uint8_t *key)
{
    uint8_t point[1 + 2 * P384_LEN];
    char group[] = SN_secp384r1;
    OSSL_PARAM params[3];
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY_CTX *check = NULL;
    EVP_PKEY *pkey = NULL;

    if (snp_get_le32(key + KEY_CURVE) != SNP_CURVE_P384) {
        return NULL;
    }
    /* SEC 1 uncompressed point: 0x04 | X | Y, big-endian. */
    point[0] = 0x04;
    if (!le_param_to_be48(key + KEY_QX, point + 1) ||
        !le_param_to_be48(key + KEY_QY, point + 1 + P384_LEN)) {
        return NULL;
    }
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME,
                                                 group, 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY,
                                                  point, sizeof(point));
    params[2] = OSSL_PARAM_construct_end();

    ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (!ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) {
        goto fail;
    }
    /* On the curve, coordinates below p, not the point at infinity. */
    check = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (!check || EVP_PKEY_public_check(check) != 1) {
        goto fail;
    }
    EVP_PKEY_CTX_free(check);
    EVP_PKEY_CTX_free(ctx);
    return pkey;

fail:
    EVP_PKEY_CTX_free(check);
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    return NULL;
}

/* Verifies a 512-byte signature field over `msg` (ECDSA P-384, SHA-384). */
static bool snp_verify(EVP_PKEY *pkey, const uint8_t *msg, size_t msglen,
                       const uint8_t *field)
{
    uint8_t r_be[P384_LEN], s_be[P384_LEN];
    ECDSA_SIG *sig = NULL;
    BIGNUM *r = NULL, *s = NULL;
    unsigned char *der = NULL;
    int derlen;
    EVP_MD_CTX *md = NULL;
    bool ok = false;

    if (!le_param_to_be48(field + SIG_R, r_be) ||
        !le_param_to_be48(field + SIG_S, s_be)) {
        return false;
    }
    sig = ECDSA_SIG_new();
    r = BN_bin2bn(r_be, P384_LEN, NULL);
    s = BN_bin2bn(s_be, P384_LEN, NULL);
    if (!sig || !r || !s || ECDSA_SIG_set0(sig, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        goto out;
    }
    /* r and s now belong to sig. */
    derlen = i2d_ECDSA_SIG(sig, &der);
    if (derlen <= 0) {
        goto out;
    }
    md = EVP_MD_CTX_new();
    if (!md ||
        EVP_DigestVerifyInit_ex(md, NULL, "SHA384", NULL, NULL, pkey,
                                NULL) != 1) {
        goto out;
    }
    /* 1 is a valid signature; 0 a wrong one; < 0 a malformed one. */
    ok = EVP_DigestVerify(md, der, derlen, msg, msglen) == 1;

out:
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    ECDSA_SIG_free(sig);
    return ok;
}

int snp_id_check(const uint8_t *id_block, size_t id_block_len,
                 const uint8_t *id_auth, size_t id_auth_len,
                 bool author_key_en, const uint8_t measurement[48],
                 uint64_t policy, SnpIdInfo *out, char *err, size_t errlen)
{
    /* QEMU accepts an id-auth shorter than 4096 bytes: the rest is zero. */
    uint8_t auth[IDA_LEN];
    uint8_t id_key_digest[SNP_DIGEST_LEN];
    uint8_t author_key_digest[SNP_DIGEST_LEN];
    EVP_PKEY *id_key = NULL, *author_key = NULL;
    char want[2 * SNP_DIGEST_LEN + 1], got[2 * SNP_DIGEST_LEN + 1];
    uint32_t u;
    uint64_t block_policy;
    int ret = -1;

#define FAIL(...)                                   \
    do {                                            \
        if (err && errlen) {                        \
            snprintf(err, errlen, __VA_ARGS__);     \
        }                                           \
        goto out;                                   \
    } while (0)

    if (out) {
        memset(out, 0, sizeof(*out));
    }
    if (err && errlen) {
        err[0] = '\0';
    }
    memset(auth, 0, sizeof(auth));
    memset(author_key_digest, 0, sizeof(author_key_digest));

    if (!id_block || id_block_len != IDB_LEN) {
        FAIL("the ID block is %zu bytes, not 96: pass id-block= exactly as "
             "`image id-block` prints it", id_block ? id_block_len : 0);
    }
    if (!id_auth || id_auth_len == 0 || id_auth_len > IDA_LEN) {
        FAIL("the ID auth structure is %zu bytes, not 1..4096: pass id-auth= "
             "exactly as `image id-block` prints it",
             id_auth ? id_auth_len : 0);
    }
    memcpy(auth, id_auth, id_auth_len);

    /* 56860 §8.18 "ID Block": VERSION must be 1. */
    u = snp_get_le32(id_block + IDB_VERSION);
    if (u != IDB_VERSION_1) {
        FAIL("the ID block's VERSION is %u, not 1: rebuild it with "
             "`image id-block`", u);
    }

    /* The ID key and its signature over the 96-byte ID block. */
    u = snp_get_le32(auth + IDA_ID_KEY_ALGO);
    if (u != SNP_ALGO_ECDSA_P384_SHA384) {
        FAIL("the ID auth's ID_KEY_ALGO is %u; only 1 (ECDSA P-384 with "
             "SHA-384) is supported: rebuild it with `image id-block`", u);
    }
    id_key = snp_pubkey(auth + IDA_ID_KEY);
    if (!id_key) {
        FAIL("the ID auth's ID key is not a valid P-384 public key (curve "
             "%u, 2 expected): rebuild it with `image id-block --id-key PEM`",
             snp_get_le32(auth + IDA_ID_KEY + KEY_CURVE));
    }
    if (!snp_verify(id_key, id_block, IDB_LEN, auth + IDA_ID_BLOCK_SIG)) {
        FAIL("the ID block's signature does not verify with the ID key in "
             "id-auth: the block or the auth structure was altered, or they "
             "come from different runs; re-sign with `image id-block` and pass "
             "id-block= and id-auth= from the same output");
    }
    if (sha384(auth + IDA_ID_KEY, KEY_LEN, id_key_digest) < 0) {
        FAIL("SHA-384 of the ID key failed (OpenSSL error)");
    }

    /* With author-key-enabled, the author key's signature over the ID key. */
    if (author_key_en) {
        u = snp_get_le32(auth + IDA_AUTH_KEY_ALGO);
        if (u != SNP_ALGO_ECDSA_P384_SHA384) {
            FAIL("author-key-enabled=on but the ID auth's AUTH_KEY_ALGO is "
                 "%u, not 1 (ECDSA P-384 with SHA-384): sign with `image "
                 "id-block --author-key PEM`, or drop author-key-enabled=on",
                 u);
        }
        author_key = snp_pubkey(auth + IDA_AUTHOR_KEY);
        if (!author_key) {
            FAIL("author-key-enabled=on but the ID auth holds no valid P-384 "
                 "author key: sign with `image id-block --author-key PEM`, "
                 "or drop author-key-enabled=on");
        }
        if (!snp_verify(author_key, auth + IDA_ID_KEY, KEY_LEN,
                        auth + IDA_ID_KEY_SIG)) {
            FAIL("the author key's signature over the ID key does not "
                 "verify: re-sign with `image id-block --id-key PEM "
                 "--author-key PEM` and pass that id-auth=");
        }
        if (sha384(auth + IDA_AUTHOR_KEY, KEY_LEN, author_key_digest) < 0) {
            FAIL("SHA-384 of the author key failed (OpenSSL error)");
        }
    }

    /* The authenticated block must describe this very launch. */
    if (memcmp(id_block + IDB_LD, measurement, SNP_DIGEST_LEN) != 0) {
        hex48(want, id_block + IDB_LD);
        hex48(got, measurement);
        FAIL("the ID block's launch digest differs from this launch's "
             "measurement: re-sign it with `image id-block` for this image, "
             "-smp and -cpu (ID block %s, launch %s)", want, got);
    }
    block_policy = snp_get_le64(id_block + IDB_POLICY);
    if (block_policy != policy) {
        FAIL("the ID block's policy 0x%llx differs from the launch policy "
             "0x%llx: re-sign with `image id-block --policy 0x%llx`, or "
             "launch with policy=0x%llx",
             (unsigned long long)block_policy, (unsigned long long)policy,
             (unsigned long long)policy, (unsigned long long)block_policy);
    }

    if (out) {
        out->present = true;
        memcpy(out->family_id, id_block + IDB_FAMILY_ID, 16);
        memcpy(out->image_id, id_block + IDB_IMAGE_ID, 16);
        out->guest_svn = snp_get_le32(id_block + IDB_GUEST_SVN);
        memcpy(out->id_key_digest, id_key_digest, SNP_DIGEST_LEN);
        memcpy(out->author_key_digest, author_key_digest, SNP_DIGEST_LEN);
        out->author_key_en = author_key_en;
    }
    ret = 0;

out:
#undef FAIL
    EVP_PKEY_free(id_key);
    EVP_PKEY_free(author_key);
    if (ret < 0) {
        /* A refused signature leaves errors queued: none of QEMU's business. */
        ERR_clear_error();
    }
    return ret;
}

/* ---------------------------------------------------------------- secrets */

/*
 * Secrets page, version 3 (56860 "Secrets Page"; docs/snp-reference.md §5.1):
 *   0x00 u32 VERSION, 0x04 u32 IMI_EN (bit 0), 0x08 u32 FMS, 0x0C reserved,
 *   0x10 GOSVW[16], 0x20 VMPCK0[32], 0x40 VMPCK1, 0x60 VMPCK2, 0x80 VMPCK3,
 *   0xA0 guest OS area, 0x100 VMSA tweak bitmap, 0x140 guest area 1,
 *   0x160 TSC factor, ...; everything not listed is zero.
 * IMI_EN is 0 (no migration image) and GOSVW 0 (QEMU's default
 * guest-visible-workarounds). FMS is left 0: the interface passes no CPU
 * model here, and the guest does not read it (snp-emu.c may store
 * CPUID(1).EAX at 0x08 after this call if that ever matters).
 */
#define SECRETS_VERSION 0x00
#define SECRETS_VERSION_3 3
#define SECRETS_VMPCK0 0x20
#define SECRETS_VMPCK_LEN 32

int snp_secrets_fill(uint8_t page[SNP_PAGE_SIZE], uint8_t vmpck[4][32])
{
    memset(page, 0, SNP_PAGE_SIZE);
    if (RAND_bytes(page + SECRETS_VMPCK0, 4 * SECRETS_VMPCK_LEN) != 1) {
        memset(page, 0, SNP_PAGE_SIZE);
        memset(vmpck, 0, 4 * SECRETS_VMPCK_LEN);
        return -1;
    }
    snp_put_le32(page + SECRETS_VERSION, SECRETS_VERSION_3);
    for (int i = 0; i < 4; i++) {
        memcpy(vmpck[i], page + SECRETS_VMPCK0 + i * SECRETS_VMPCK_LEN,
               SECRETS_VMPCK_LEN);
    }
    return 0;
}
