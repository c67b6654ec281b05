/*
 * Vellum emulated SEV-SNP platform: the emulated chip's keys and
 * SNP_GUEST_REQUEST (the "attestation" part of snp-emu-pure.h).
 *
 * This is the emulated AMD-SP answering guest messages: it checks and
 * decrypts a request sealed under one of the guest's VMPCKs, enforces the
 * message sequence numbers, and answers MSG_REPORT_REQ with an
 * ATTESTATION_REPORT (version 3) signed by the chip's VCEK. It also plays
 * AMD's Key Distribution Service for the emulated chip: an ARK, an ASK and a
 * VCEK certificate issued the way the KDS issues them. Sources of the facts
 * used here:
 *  - SNP firmware ABI (AMD 56860): §7 "Guest Messages" (message header,
 *    table "Message Header Format"; message types; AEAD = AES-256-GCM),
 *    §7.3 MSG_REPORT_REQ / MSG_REPORT_RSP, table "ATTESTATION_REPORT
 *    Structure", "TCB_VERSION Structure", table "Status Codes", §8.26
 *    SNP_GUEST_REQUEST; chapter 10 "Digital Signatures" (ECDSA P-384 with
 *    SHA-384, R and S little-endian in 72-byte fields);
 *  - AMD's "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
 *    Interface Specification" (57230): RSASSA-PSS SHA-384 certificates, the
 *    VCEK extensions 1.3.6.1.4.1.3704.1.x, and AMD's real Milan ARK, ASK and
 *    VCEK (image/tests/data/amd-milan/), whose structure is copied field by
 *    field (names, serials, extensions, their order and encodings);
 *  - Vellum's docs/snp-reference.md §5 "Attestation" and the
 *    repository's guest (boot/src/snp/guest_msg.rs, kernel/src/attest.rs)
 *    and verifier (image/src/verify/), which must accept what this file
 *    produces;
 *  - Linux drivers/virt/coco/sev-guest (the comment above
 *    snp_disable_vmpck()): the firmware advances its sequence numbers only
 *    on a successful request/response exchange and accepts a message only
 *    at its exact next sequence number.
 *
 * Only libc, POSIX file calls and OpenSSL 3.0 libcrypto (EVP and X509
 * interfaces) are used, so this file builds both inside QEMU and in
 * snp-platform/tests/.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "snp-emu-pure.h"

/* ---------------------------------------------------------------- the chip */

/*
 * The reported TCB, in the Milan/Genoa TCB_VERSION layout (56860 table
 * "TCB_VERSION Structure"): byte 0 BOOT_LOADER, byte 1 TEE, bytes 2..5
 * reserved, byte 6 SNP, byte 7 MICROCODE. Bootloader 3, TEE 0, SNP 8,
 * microcode 115 (0x73) is what the real Milan report in the tests carries.
 * The verifier reads the VCEK's product name to pick this layout, so the
 * product name below must be a Milan (or Genoa) one.
 */
#define TCB_BOOT_LOADER 3
#define TCB_TEE 0
#define TCB_SNP 8
#define TCB_MICROCODE 115
#define SNP_EMU_TCB ((uint64_t)TCB_BOOT_LOADER | (uint64_t)TCB_TEE << 8 | \
                     (uint64_t)TCB_SNP << 48 | (uint64_t)TCB_MICROCODE << 56)
#define SNP_EMU_PRODUCT "Milan-B0"

/* The firmware version reported as CURRENT and COMMITTED: 1.55 build 21. */
#define SNP_EMU_FW_MAJOR 1
#define SNP_EMU_FW_MINOR 55
#define SNP_EMU_FW_BUILD 21

/* PLATFORM_INFO: bit 0 SMT_EN (the real Milan report has only this bit). */
#define SNP_EMU_PLATFORM_INFO 0x1

#define CHIP_ID_LEN 64
#define RSA_BITS 4096
#define PSS_SALT_LEN 48  /* the SHA-384 output size, as AMD uses */

/* Certificate validity: AMD's ARK and ASK run 25 years, a VCEK 7 years. */
#define CA_DAYS (25 * 365 + 6)
#define VCEK_DAYS (7 * 365 + 2)

struct SnpChip {
    EVP_PKEY *vcek;                 /* P-384 */
    uint8_t chip_id[CHIP_ID_LEN];
    uint64_t tcb;
    uint8_t report_id_key[32];      /* per process: derives REPORT_ID */
};

/* ---------------------------------------------------------------- helpers */







#define SNP_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* Writes a sentence to `buf` (if any). */
static void SNP_PRINTF(3, 4) say(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;

    if (!buf || !len) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

/*
 * Writes a sentence to `err`, followed by OpenSSL's reason for the most
 * recent failure when there is one; clears OpenSSL's error queue.
 */
static void SNP_PRINTF(3, 4) fail(char *err, size_t errlen,
                                  const char *fmt, ...)
{
    char msg[512], ossl[256] = "";
    unsigned long e = ERR_peek_last_error();
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (e) {
        ERR_error_string_n(e, ossl, sizeof(ossl));
    }
    ERR_clear_error();
    say(err, errlen, "%s%s%s", msg, e ? " (OpenSSL: " : "", e ? ossl : "");
    if (e && err && errlen && strlen(err) + 1 < errlen) {
        strcat(err, ")");
    }
}

/* ---------------------------------------------------------------- files */

/* 0: exists; 1: does not exist; -1: cannot tell (errno set). */
static int file_missing(const char *path)
{
    struct stat st;

    if (stat(path, &st) == 0) {
        return 0;
    }
    return errno == ENOENT ? 1 : -1;
}

static bool make_dir(const char *path, mode_t mode, char *err, size_t errlen)
{
    struct stat st;

    if (mkdir(path, mode) == 0) {
        return true;
    }
    if (errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        return true;
    }
    say(err, errlen, "cannot create the directory %s: %s", path,
        strerror(errno));
    return false;
}

/*
 * Writes a whole file with `mode` by way of a temporary file and rename(),
 * so that a reader never sees half of it.
 */
static bool write_file(const char *path, const void *data, size_t len,
                       mode_t mode, char *err, size_t errlen)
{
    char tmp[4096];
    const uint8_t *p = data;
    int fd;

    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp%ld", path,
                         (long)getpid()) >= sizeof(tmp)) {
        say(err, errlen, "the path %s is too long", path);
        return false;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0) {
        say(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        return false;
    }
    while (len) {
        ssize_t n = write(fd, p, len);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            say(err, errlen, "cannot write %s: %s", tmp,
                n < 0 ? strerror(errno) : "short write");
            close(fd);
            unlink(tmp);
            return false;
        }
        p += n;
        len -= n;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        say(err, errlen, "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        return false;
    }
    return true;
}

/* Writes what a memory BIO holds to `path`. */
static bool write_bio(const char *path, BIO *mem, mode_t mode, char *err,
                      size_t errlen)
{
    char *data = NULL;
    long len = BIO_get_mem_data(mem, &data);

    if (len <= 0) {
        fail(err, errlen, "nothing to write to %s", path);
        return false;
    }
    return write_file(path, data, (size_t)len, mode, err, errlen);
}

static bool write_key(const char *path, EVP_PKEY *key, char *err,
                      size_t errlen)
{
    BIO *mem = BIO_new(BIO_s_mem());
    bool ok;

    /* PKCS#8, unencrypted: the directory is the emulated chip's fuses. */
    ok = mem && PEM_write_bio_PrivateKey(mem, key, NULL, NULL, 0, NULL,
                                         NULL) == 1;
    if (!ok) {
        fail(err, errlen, "cannot encode the key for %s", path);
    } else {
        ok = write_bio(path, mem, 0600, err, errlen);
    }
    BIO_free(mem);
    return ok;
}

static bool write_cert(const char *path, X509 *cert, char *err, size_t errlen)
{
    BIO *mem = BIO_new(BIO_s_mem());
    bool ok;

    ok = mem && PEM_write_bio_X509(mem, cert) == 1;
    if (!ok) {
        fail(err, errlen, "cannot encode the certificate for %s", path);
    } else {
        ok = write_bio(path, mem, 0644, err, errlen);
    }
    BIO_free(mem);
    return ok;
}

/* ---------------------------------------------------------------- keys */

static EVP_PKEY *read_key(const char *path, char *err, size_t errlen)
{
    BIO *in = BIO_new_file(path, "r");
    EVP_PKEY *key = NULL;

    if (in) {
        key = PEM_read_bio_PrivateKey(in, NULL, NULL, NULL);
        BIO_free(in);
    }
    if (!key) {
        fail(err, errlen, "cannot read the private key %s", path);
    }
    return key;
}

static bool is_p384(EVP_PKEY *key)
{
    char group[64] = "";

    return EVP_PKEY_is_a(key, "EC") &&
           EVP_PKEY_get_group_name(key, group, sizeof(group), NULL) == 1 &&
           strcmp(group, SN_secp384r1) == 0;
}

static bool is_rsa4096(EVP_PKEY *key)
{
    return EVP_PKEY_is_a(key, "RSA") && EVP_PKEY_get_bits(key) == RSA_BITS;
}

/*
 * DIR/private/NAME: loaded when it exists, otherwise made and written
 * (`*made` set). RSA-4096 key generation takes a few seconds.
 */
static EVP_PKEY *load_or_make_key(const char *dir, const char *name,
                                  bool rsa, bool *made, char *err,
                                  size_t errlen)
{
    char path[4096];
    EVP_PKEY *key;
    int missing;

    snprintf(path, sizeof(path), "%s/private/%s", dir, name);
    missing = file_missing(path);
    if (missing < 0) {
        say(err, errlen, "cannot look at %s: %s", path, strerror(errno));
        return NULL;
    }
    if (!missing) {
        key = read_key(path, err, errlen);
        if (!key && err && errlen && strlen(err) + 1 < errlen) {
            snprintf(err + strlen(err), errlen - strlen(err), "; remove "
                     "%s/private to make a new emulated chip", dir);
        }
        if (key && !(rsa ? is_rsa4096(key) : is_p384(key))) {
            say(err, errlen, "%s is not an %s key; remove %s/private to make "
                "a new emulated chip", path, rsa ? "RSA-4096" : "ECDSA P-384",
                dir);
            EVP_PKEY_free(key);
            key = NULL;
        }
        return key;
    }
    key = rsa ? EVP_RSA_gen(RSA_BITS) : EVP_EC_gen(SN_secp384r1);
    if (!key) {
        fail(err, errlen, "cannot generate the %s key", name);
        return NULL;
    }
    if (!write_key(path, key, err, errlen)) {
        EVP_PKEY_free(key);
        return NULL;
    }
    *made = true;
    return key;
}

static bool unhex(const char *s, uint8_t *out, size_t len)
{
    for (size_t i = 0; i < 2 * len; i++) {
        int c = s[i], v;

        if (c >= '0' && c <= '9') {
            v = c - '0';
        } else if (c >= 'a' && c <= 'f') {
            v = c - 'a' + 10;
        } else if (c >= 'A' && c <= 'F') {
            v = c - 'A' + 10;
        } else {
            return false;
        }
        if (i % 2) {
            out[i / 2] |= v;
        } else {
            out[i / 2] = v << 4;
        }
    }
    return true;
}

/* DIR/private/chip_id.hex: 128 hex digits; loaded, or made and written. */
static bool load_or_make_chip_id(const char *dir, uint8_t id[CHIP_ID_LEN],
                                 bool *made, char *err, size_t errlen)
{
    char path[4096], text[2 * CHIP_ID_LEN + 2];
    int missing;
    FILE *f;
    size_t n;

    snprintf(path, sizeof(path), "%s/private/chip_id.hex", dir);
    missing = file_missing(path);
    if (missing < 0) {
        say(err, errlen, "cannot look at %s: %s", path, strerror(errno));
        return false;
    }
    if (!missing) {
        f = fopen(path, "r");
        if (!f) {
            say(err, errlen, "cannot read %s: %s", path, strerror(errno));
            return false;
        }
        n = fread(text, 1, sizeof(text), f);
        fclose(f);
        if (n < 2 * CHIP_ID_LEN || (n > 2 * CHIP_ID_LEN &&
                                    text[2 * CHIP_ID_LEN] != '\n') ||
            !unhex(text, id, CHIP_ID_LEN)) {
            say(err, errlen, "%s is not 128 hex digits; remove %s/private to "
                "make a new emulated chip", path, dir);
            return false;
        }
        return true;
    }
    if (RAND_bytes(id, CHIP_ID_LEN) != 1) {
        fail(err, errlen, "no randomness for the chip ID");
        return false;
    }
    for (int i = 0; i < CHIP_ID_LEN; i++) {
        snprintf(text + 2 * i, 3, "%02x", id[i]);
    }
    text[2 * CHIP_ID_LEN] = '\n';
    if (!write_file(path, text, 2 * CHIP_ID_LEN + 1, 0600, err, errlen)) {
        return false;
    }
    *made = true;
    return true;
}

/* ------------------------------------------------------------ certificates */

/*
 * AMD's names: OU=Engineering, C=US, L=Santa Clara, ST=CA,
 * O=Advanced Micro Devices, CN=ARK-Milan / SEV-Milan / SEV-VCEK, in this
 * order, UTF8String except the country (PrintableString). The organization
 * says that this is an emulation, so that nobody mistakes the certificates
 * for AMD's (their ARK is not AMD's either: verifiers pin AMD's ARK keys).
 */
#define SNP_EMU_ORG "Advanced Micro Devices (emulated by Vellum)"

static X509_NAME *amd_name(const char *cn)
{
    const char *const fields[][2] = {
        { "OU", "Engineering" },
        { "C", "US" },
        { "L", "Santa Clara" },
        { "ST", "CA" },
        { "O", SNP_EMU_ORG },
        { "CN", cn },
    };
    X509_NAME *name = X509_NAME_new();

    for (size_t i = 0; name && i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (X509_NAME_add_entry_by_txt(name, fields[i][0], MBSTRING_UTF8,
                                       (const unsigned char *)fields[i][1],
                                       -1, -1, 0) != 1) {
            X509_NAME_free(name);
            return NULL;
        }
    }
    return name;
}

/* A standard extension from its OpenSSL configuration text. */
static bool add_std_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    bool ok;

    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    ok = ext && X509_add_ext(cert, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
}

/* An extension whose extnValue holds `der` as is. */
static bool add_raw_ext(X509 *cert, const char *oid, const uint8_t *der,
                        size_t len)
{
    ASN1_OBJECT *obj = OBJ_txt2obj(oid, 1);
    ASN1_OCTET_STRING *value = ASN1_OCTET_STRING_new();
    X509_EXTENSION *ext = NULL;
    bool ok = false;

    if (obj && value && ASN1_OCTET_STRING_set(value, der, (int)len) == 1) {
        ext = X509_EXTENSION_create_by_OBJ(NULL, obj, 0, value);
        ok = ext && X509_add_ext(cert, ext, -1) == 1;
    }
    X509_EXTENSION_free(ext);
    ASN1_OCTET_STRING_free(value);
    ASN1_OBJECT_free(obj);
    return ok;
}

/*
 * The VCEK extensions as AMD's KDS writes them (57230 §3; the real Milan
 * VCEK), in this order:
 *   1.3.6.1.4.1.3704.1.1      structVersion, INTEGER 0
 *   1.3.6.1.4.1.3704.1.2      productName1, IA5String ("Milan-B0")
 *   1.3.6.1.4.1.3704.1.3.1    blSPL, INTEGER
 *   1.3.6.1.4.1.3704.1.3.2    teeSPL, INTEGER
 *   1.3.6.1.4.1.3704.1.3.4..7 spl_4..spl_7, INTEGER 0
 *   1.3.6.1.4.1.3704.1.3.3    snpSPL, INTEGER
 *   1.3.6.1.4.1.3704.1.3.8    ucodeSPL, INTEGER
 *   1.3.6.1.4.1.3704.1.4      hwID: the 64-byte chip ID, raw (no DER)
 */
typedef struct VcekExt {
    const char *oid;
    uint8_t der[CHIP_ID_LEN + 2];
    size_t len;
} VcekExt;

#define VCEK_NEXT 11

/* DER INTEGER of 0..255. */
static size_t der_small_int(uint8_t *out, unsigned v)
{
    out[0] = 0x02;
    if (v < 0x80) {
        out[1] = 1;
        out[2] = v;
        return 3;
    }
    out[1] = 2;
    out[2] = 0;
    out[3] = v;
    return 4;
}

static void vcek_extensions(const SnpChip *chip, VcekExt ext[VCEK_NEXT])
{
    static const char *const oids[VCEK_NEXT] = {
        "1.3.6.1.4.1.3704.1.1", "1.3.6.1.4.1.3704.1.2",
        "1.3.6.1.4.1.3704.1.3.1", "1.3.6.1.4.1.3704.1.3.2",
        "1.3.6.1.4.1.3704.1.3.4", "1.3.6.1.4.1.3704.1.3.5",
        "1.3.6.1.4.1.3704.1.3.6", "1.3.6.1.4.1.3704.1.3.7",
        "1.3.6.1.4.1.3704.1.3.3", "1.3.6.1.4.1.3704.1.3.8",
        "1.3.6.1.4.1.3704.1.4",
    };
    const unsigned ints[] = {
        0, 0, (unsigned)(chip->tcb & 0xff), (unsigned)(chip->tcb >> 8 & 0xff),
        0, 0, 0, 0, (unsigned)(chip->tcb >> 48 & 0xff),
        (unsigned)(chip->tcb >> 56),
    };

    for (int i = 0; i < VCEK_NEXT; i++) {
        ext[i].oid = oids[i];
        if (i == 1) {
            size_t n = strlen(SNP_EMU_PRODUCT);

            ext[i].der[0] = 0x16;   /* IA5String */
            ext[i].der[1] = n;
            memcpy(ext[i].der + 2, SNP_EMU_PRODUCT, n);
            ext[i].len = n + 2;
        } else if (i == VCEK_NEXT - 1) {
            memcpy(ext[i].der, chip->chip_id, CHIP_ID_LEN);
            ext[i].len = CHIP_ID_LEN;
        } else {
            ext[i].len = der_small_int(ext[i].der, ints[i]);
        }
    }
}

/* Signs with RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48, as AMD does. */
static bool sign_pss(X509 *cert, EVP_PKEY *key)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    bool ok;

    ok = md &&
         EVP_DigestSignInit_ex(md, &pctx, "SHA384", NULL, NULL, key,
                               NULL) == 1 &&
         EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
         EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, "SHA384", NULL) == 1 &&
         EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, PSS_SALT_LEN) == 1 &&
         X509_sign_ctx(cert, md) > 0;
    EVP_MD_CTX_free(md);
    return ok;
}

typedef enum CertKind { CERT_ARK, CERT_ASK, CERT_VCEK } CertKind;

/*
 * Issues one certificate as the KDS does (serials, names, validity and
 * extensions as in AMD's real Milan certificates):
 *   ARK  serial 0x10000, self-signed; keyUsage (critical) keyCertSign and
 *        cRLSign, subjectKeyIdentifier, basicConstraints (critical) CA;
 *   ASK  serial 0x10001, signed by the ARK; subjectKeyIdentifier,
 *        authorityKeyIdentifier, basicConstraints (critical) CA pathlen 0,
 *        keyUsage (critical) keyCertSign;
 *   VCEK serial 0, signed by the ASK; the AMD extensions only.
 * AMD's CRL distribution points (kdsintf.amd.com) are left out: there is no
 * CRL for an emulated chip. Validity starts a day ago (clock skew).
 */
static X509 *issue(CertKind kind, const SnpChip *chip, EVP_PKEY *subject_key,
                   X509 *issuer_cert, EVP_PKEY *issuer_key)
{
    static const char *const cns[] = { "ARK-Milan", "SEV-Milan", "SEV-VCEK" };
    X509 *cert = X509_new();
    X509_NAME *subject = amd_name(cns[kind]);
    X509_NAME *issuer = kind == CERT_ARK ? subject :
                        X509_get_subject_name(issuer_cert);
    uint64_t serial = kind == CERT_ARK ? 0x10000 :
                      kind == CERT_ASK ? 0x10001 : 0;
    long days = kind == CERT_VCEK ? VCEK_DAYS : CA_DAYS;
    X509 *issuer_or_self = kind == CERT_ARK ? cert : issuer_cert;
    bool ok;

    ok = cert && subject && issuer &&
         X509_set_version(cert, X509_VERSION_3) == 1 &&
         ASN1_INTEGER_set_uint64(X509_get_serialNumber(cert), serial) == 1 &&
         X509_set_subject_name(cert, subject) == 1 &&
         X509_set_issuer_name(cert, issuer) == 1 &&
         X509_gmtime_adj(X509_getm_notBefore(cert), -86400L) &&
         X509_time_adj_ex(X509_getm_notAfter(cert), days, 0, NULL) &&
         X509_set_pubkey(cert, subject_key) == 1;
    if (ok && kind == CERT_ARK) {
        ok = add_std_ext(cert, cert, NID_key_usage,
                         "critical,keyCertSign,cRLSign") &&
             add_std_ext(cert, cert, NID_subject_key_identifier, "hash") &&
             add_std_ext(cert, cert, NID_basic_constraints,
                         "critical,CA:TRUE");
    } else if (ok && kind == CERT_ASK) {
        ok = add_std_ext(cert, issuer_or_self, NID_subject_key_identifier,
                         "hash") &&
             add_std_ext(cert, issuer_or_self, NID_authority_key_identifier,
                         "keyid:always") &&
             add_std_ext(cert, issuer_or_self, NID_basic_constraints,
                         "critical,CA:TRUE,pathlen:0") &&
             add_std_ext(cert, issuer_or_self, NID_key_usage,
                         "critical,keyCertSign");
    } else if (ok) {
        VcekExt ext[VCEK_NEXT];

        vcek_extensions(chip, ext);
        for (int i = 0; ok && i < VCEK_NEXT; i++) {
            ok = add_raw_ext(cert, ext[i].oid, ext[i].der, ext[i].len);
        }
    }
    ok = ok && sign_pss(cert, issuer_key);
    X509_NAME_free(subject);
    if (!ok) {
        X509_free(cert);
        return NULL;
    }
    return cert;
}

static X509 *read_cert(const char *path)
{
    BIO *in = BIO_new_file(path, "r");
    X509 *cert = NULL;

    if (in) {
        cert = PEM_read_bio_X509(in, NULL, NULL, NULL);
        BIO_free(in);
    }
    ERR_clear_error();
    return cert;
}

/*
 * Whether an existing certificate can stay: it certifies `key`, its issuer's
 * key signed it, it is valid now and, for the VCEK, its extensions are the
 * ones this chip would write.
 */
static bool cert_current(X509 *cert, EVP_PKEY *key, EVP_PKEY *issuer_key,
                         const SnpChip *vcek_chip)
{
    EVP_PKEY *pub = cert ? X509_get0_pubkey(cert) : NULL;
    bool ok;

    ok = pub && EVP_PKEY_eq(pub, key) == 1 &&
         X509_verify(cert, issuer_key) == 1 &&
         X509_cmp_current_time(X509_get0_notBefore(cert)) < 0 &&
         X509_cmp_current_time(X509_get0_notAfter(cert)) > 0;
    if (ok && vcek_chip) {
        VcekExt ext[VCEK_NEXT];

        vcek_extensions(vcek_chip, ext);
        for (int i = 0; ok && i < VCEK_NEXT; i++) {
            ASN1_OBJECT *obj = OBJ_txt2obj(ext[i].oid, 1);
            int at = obj ? X509_get_ext_by_OBJ(cert, obj, -1) : -1;
            ASN1_OCTET_STRING *v =
                at >= 0 ? X509_EXTENSION_get_data(X509_get_ext(cert, at))
                        : NULL;

            ok = v && (size_t)ASN1_STRING_length(v) == ext[i].len &&
                 memcmp(ASN1_STRING_get0_data(v), ext[i].der,
                        ext[i].len) == 0;
            ASN1_OBJECT_free(obj);
        }
    }
    ERR_clear_error();
    return ok;
}

/*
 * DIR/ark.pem, ask.pem and vcek.pem for the keys. Certificates that are
 * still right for the keys are kept (one directory is one machine: its ARK
 * and certificates do not change from launch to launch); otherwise all
 * three are issued afresh. `force` (a key was just made) always reissues.
 */
static bool write_certs(const char *dir, const SnpChip *chip, EVP_PKEY *ark,
                        EVP_PKEY *ask, bool force, char *err, size_t errlen)
{
    char paths[3][4096];
    X509 *certs[3] = { NULL, NULL, NULL };
    const char *names[3] = { "ark.pem", "ask.pem", "vcek.pem" };
    bool ok = true;

    for (int i = 0; i < 3; i++) {
        snprintf(paths[i], sizeof(paths[i]), "%s/%s", dir, names[i]);
    }
    if (!force) {
        for (int i = 0; i < 3; i++) {
            certs[i] = read_cert(paths[i]);
        }
        if (cert_current(certs[0], ark, ark, NULL) &&
            cert_current(certs[1], ask, ark, NULL) &&
            cert_current(certs[2], chip->vcek, ask, chip)) {
            goto out;
        }
        for (int i = 0; i < 3; i++) {
            X509_free(certs[i]);
            certs[i] = NULL;
        }
    }
    certs[0] = issue(CERT_ARK, chip, ark, NULL, ark);
    certs[1] = certs[0] ? issue(CERT_ASK, chip, ask, certs[0], ark) : NULL;
    certs[2] = certs[1] ? issue(CERT_VCEK, chip, chip->vcek, certs[1], ask)
                        : NULL;
    if (!certs[2]) {
        fail(err, errlen, "cannot issue the emulated chip's certificates");
        ok = false;
        goto out;
    }
    for (int i = 0; ok && i < 3; i++) {
        ok = write_cert(paths[i], certs[i], err, errlen);
    }

out:
    for (int i = 0; i < 3; i++) {
        X509_free(certs[i]);
    }
    return ok;
}

/* ---------------------------------------------------------------- chip API */

SnpChip *snp_chip_new(const char *certs_dir, char *err, size_t errlen)
{
    SnpChip *chip = calloc(1, sizeof(*chip));
    EVP_PKEY *ark = NULL, *ask = NULL;
    char priv[4096];
    bool made = false;

    if (!chip) {
        say(err, errlen, "out of memory for the emulated chip");
        return NULL;
    }
    chip->tcb = SNP_EMU_TCB;
    if (RAND_bytes(chip->report_id_key, sizeof(chip->report_id_key)) != 1) {
        fail(err, errlen, "no randomness for the emulated chip");
        goto fail;
    }
    if (!certs_dir || !*certs_dir) {
        /* Only an in-memory VCEK: reports cannot be checked against a chain. */
        chip->vcek = EVP_EC_gen(SN_secp384r1);
        if (!chip->vcek || RAND_bytes(chip->chip_id, CHIP_ID_LEN) != 1) {
            fail(err, errlen, "cannot make the emulated chip's VCEK");
            goto fail;
        }
        return chip;
    }

    if ((size_t)snprintf(priv, sizeof(priv), "%s/private", certs_dir) >=
        sizeof(priv) - 32) {
        say(err, errlen, "the certificate directory path %s is too long",
            certs_dir);
        goto fail;
    }
    if (!make_dir(certs_dir, 0755, err, errlen) ||
        !make_dir(priv, 0700, err, errlen)) {
        goto fail;
    }
    /* A fresh directory makes two RSA-4096 keys: this takes seconds. */
    ark = load_or_make_key(certs_dir, "ark.key", true, &made, err, errlen);
    ask = ark ? load_or_make_key(certs_dir, "ask.key", true, &made, err,
                                 errlen) : NULL;
    chip->vcek = ask ? load_or_make_key(certs_dir, "vcek.key", false, &made,
                                        err, errlen) : NULL;
    if (!chip->vcek ||
        !load_or_make_chip_id(certs_dir, chip->chip_id, &made, err, errlen) ||
        !write_certs(certs_dir, chip, ark, ask, made, err, errlen)) {
        goto fail;
    }
    EVP_PKEY_free(ark);
    EVP_PKEY_free(ask);
    return chip;

fail:
    EVP_PKEY_free(ark);
    EVP_PKEY_free(ask);
    snp_chip_free(chip);
    return NULL;
}

void snp_chip_free(SnpChip *chip)
{
    if (!chip) {
        return;
    }
    EVP_PKEY_free(chip->vcek);
    OPENSSL_cleanse(chip, sizeof(*chip));
    free(chip);
}

uint64_t snp_chip_tcb(const SnpChip *chip)
{
    return chip->tcb;
}

/* ---------------------------------------------------------------- messages */

/*
 * Guest message header (56860 §7, table "Message Header Format"), 0x60 bytes:
 *   0x00 AUTHTAG[32]   AES-256-GCM tag in the first 16 bytes
 *   0x20 u64 MSG_SEQNO the GCM IV: its 8 little-endian bytes, 4 zero bytes
 *   0x28 reserved
 *   0x30 u8 ALGO (1 = AES-256-GCM), 0x31 u8 HDR_VERSION (1),
 *   0x32 u16 SNP_MSG_HDR_LEN (0x60), 0x34 u8 MSG_TYPE, 0x35 u8 MSG_VERSION,
 *   0x36 u16 MSG_SIZE, 0x38 reserved, 0x3C u8 MSG_VMPCK, reserved to 0x60
 *   0x60 payload (MSG_SIZE bytes)
 * The additional authenticated data is the header from 0x30 to 0x60.
 */
#define AAD_LEN (SNP_MSG_HDR_LEN - SNP_MSG_AAD)
#define TAG_LEN 16
#define IV_LEN 12
#define MAX_PAYLOAD (SNP_PAGE_SIZE - SNP_MSG_HDR_LEN)
#define ALGO_AES_256_GCM 1

enum {
    MSG_CPUID_REQ = 1,
    MSG_KEY_REQ = 3,
    MSG_REPORT_REQ = 5,
    MSG_REPORT_RSP = 6,
};

/*
 * MSG_REPORT_REQ (56860 §7.3), 96 bytes: REPORT_DATA[64] | u32 VMPL |
 * u32 KEY_SEL (bits 1:0; 0 = default, 1 = VCEK, 2 = VLEK) | reserved.
 * MSG_REPORT_RSP: u32 STATUS | u32 REPORT_SIZE | reserved[24] | report.
 */
#define REPORT_REQ_SIZE 96
#define RQ_REPORT_DATA 0x00
#define RQ_VMPL 0x40
#define RQ_KEY_SEL 0x44
#define REPORT_SIZE 0x4A0
#define RSP_STATUS 0x00
#define RSP_REPORT_SIZE 0x04
#define RSP_REPORT 0x20
#define REPORT_RSP_SIZE (RSP_REPORT + REPORT_SIZE)

/*
 * ATTESTATION_REPORT (56860 table "ATTESTATION_REPORT Structure"), version 3;
 * docs/snp-reference.md §5.4 "Attestation report layout".
 */
#define R_VERSION 0x00
#define R_GUEST_SVN 0x04
#define R_POLICY 0x08
#define R_FAMILY_ID 0x10
#define R_IMAGE_ID 0x20
#define R_VMPL 0x30
#define R_SIG_ALGO 0x34
#define R_CURRENT_TCB 0x38
#define R_PLATFORM_INFO 0x40
#define R_FLAGS 0x48
#define R_REPORT_DATA 0x50
#define R_MEASUREMENT 0x90
#define R_HOST_DATA 0xC0
#define R_ID_KEY_DIGEST 0xE0
#define R_AUTHOR_KEY_DIGEST 0x110
#define R_REPORT_ID 0x140
#define R_REPORT_ID_MA 0x160
#define R_REPORTED_TCB 0x180
#define R_CPUID_FAM_ID 0x188
#define R_CPUID_MOD_ID 0x189
#define R_CPUID_STEP 0x18A
#define R_CHIP_ID 0x1A0
#define R_COMMITTED_TCB 0x1E0
#define R_CURRENT_BUILD 0x1E8
#define R_CURRENT_MINOR 0x1E9
#define R_CURRENT_MAJOR 0x1EA
#define R_COMMITTED_BUILD 0x1EC
#define R_COMMITTED_MINOR 0x1ED
#define R_COMMITTED_MAJOR 0x1EE
#define R_LAUNCH_TCB 0x1F0
#define R_SIGNATURE 0x2A0
#define R_SIG_R 0x2A0
#define R_SIG_S 0x2E8
#define ECC_PARAM_LEN 72
#define P384_LEN 48

#define REPORT_VERSION 3
#define SIG_ALGO_ECDSA_P384_SHA384 1
#define FLAG_AUTHOR_KEY_EN (1u << 0)
/* FLAGS bits 4:2 SIGNING_KEY: 0 = VCEK (1 = VLEK, 7 = none). */
#define FLAG_SIGNING_KEY_VCEK (0u << 2)

static const char *msg_type_name(unsigned type)
{
    static const char *const names[] = {
        "an unknown message", "MSG_CPUID_REQ", "MSG_CPUID_RSP", "MSG_KEY_REQ",
        "MSG_KEY_RSP", "MSG_REPORT_REQ", "MSG_REPORT_RSP", "MSG_EXPORT_REQ",
        "MSG_EXPORT_RSP", "MSG_IMPORT_REQ", "MSG_IMPORT_RSP",
        "MSG_ABSORB_REQ", "MSG_ABSORB_RSP", "MSG_VMRK_REQ", "MSG_VMRK_RSP",
        "MSG_ABSORB_NOMA_REQ", "MSG_ABSORB_NOMA_RSP", "MSG_TSC_INFO_REQ",
        "MSG_TSC_INFO_RSP",
    };

    return type < sizeof(names) / sizeof(names[0]) ? names[type] :
           "an unknown message";
}

static void gcm_iv(uint64_t seqno, uint8_t iv[IV_LEN])
{
    memset(iv, 0, IV_LEN);
    snp_put_le64(iv, seqno);
}

/*
 * AES-256-GCM. `enc`: seals `in` into `out` and writes the tag to `tag`;
 * otherwise opens `in` into `out` and checks `tag`. Returns false if the
 * tag does not match (or OpenSSL fails).
 */
static bool gcm(bool enc, const uint8_t key[32], uint64_t seqno,
                const uint8_t *aad, const uint8_t *in, size_t len,
                uint8_t *out, uint8_t tag[TAG_LEN])
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    uint8_t iv[IV_LEN];
    int n = 0, fin = 0;
    bool ok;

    gcm_iv(seqno, iv);
    ok = c &&
         EVP_CipherInit_ex2(c, EVP_aes_256_gcm(), NULL, NULL, enc, NULL) ==
             1 &&
         EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, IV_LEN, NULL) == 1 &&
         EVP_CipherInit_ex2(c, NULL, key, iv, enc, NULL) == 1 &&
         EVP_CipherUpdate(c, NULL, &n, aad, AAD_LEN) == 1 &&
         (len == 0 || EVP_CipherUpdate(c, out, &n, in, (int)len) == 1) &&
         (enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_LEN,
                                     tag) == 1) &&
         EVP_CipherFinal_ex(c, out + (len ? n : 0), &fin) == 1 &&
         (!enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_LEN,
                                      tag) == 1);
    EVP_CIPHER_CTX_free(c);
    ERR_clear_error();
    return ok;
}

/* CPUID(1).EAX as the report's family, model and stepping (AMD APM vol. 3). */
static void cpuid_fms_split(uint32_t eax, uint8_t *fam, uint8_t *model,
                            uint8_t *step)
{
    uint32_t base_fam = eax >> 8 & 0xf, ext_fam = eax >> 20 & 0xff;
    uint32_t base_model = eax >> 4 & 0xf, ext_model = eax >> 16 & 0xf;

    *fam = base_fam + (base_fam == 0xf ? ext_fam : 0);
    *model = base_model | (base_fam == 0xf ? ext_model << 4 : 0);
    *step = eax & 0xf;
}

/*
 * REPORT_ID: real firmware draws it at launch and keeps it for the guest's
 * life. SnpGuestInfo has no room for it, so it is derived, stable for one
 * guest (one set of VMPCKs, fresh at each launch) and unlinkable across
 * launches: HMAC-SHA-256(per-process chip secret, "REPORT_ID" || VMPCK0..3).
 */
static bool report_id(const SnpChip *chip, const SnpGuestInfo *guest,
                      uint8_t out[32])
{
    uint8_t msg[9 + sizeof(guest->vmpck)];
    size_t outlen = 0;
    bool ok;

    memcpy(msg, "REPORT_ID", 9);
    memcpy(msg + 9, guest->vmpck, sizeof(guest->vmpck));
    ok = EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, chip->report_id_key,
                   sizeof(chip->report_id_key), msg, sizeof(msg), out, 32,
                   &outlen) != NULL && outlen == 32;
    OPENSSL_cleanse(msg, sizeof(msg));
    return ok;
}

/* Signs report[0, 0x2A0) with the VCEK: ECDSA P-384, SHA-384 (56860 ch. 10). */
static bool sign_report(EVP_PKEY *vcek, uint8_t report[REPORT_SIZE])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[160];
    const unsigned char *p = der;
    size_t derlen = sizeof(der);
    ECDSA_SIG *sig = NULL;
    const BIGNUM *r, *s;
    bool ok;

    ok = md &&
         EVP_DigestSignInit_ex(md, NULL, "SHA384", NULL, NULL, vcek, NULL) ==
             1 &&
         EVP_DigestSign(md, der, &derlen, report, R_SIGNATURE) == 1 &&
         (sig = d2i_ECDSA_SIG(NULL, &p, (long)derlen)) != NULL;
    if (ok) {
        ECDSA_SIG_get0(sig, &r, &s);
        memset(report + R_SIGNATURE, 0, REPORT_SIZE - R_SIGNATURE);
        ok = BN_num_bytes(r) <= P384_LEN && BN_num_bytes(s) <= P384_LEN &&
             BN_bn2lebinpad(r, report + R_SIG_R, ECC_PARAM_LEN) ==
                 ECC_PARAM_LEN &&
             BN_bn2lebinpad(s, report + R_SIG_S, ECC_PARAM_LEN) ==
                 ECC_PARAM_LEN;
    }
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(md);
    return ok;
}

/* Fills and signs an ATTESTATION_REPORT for REPORT_DATA and VMPL. */
static bool build_report(const SnpChip *chip, const SnpGuestInfo *guest,
                         const SnpAttestFaults *faults,
                         const uint8_t report_data[64], uint32_t vmpl,
                         uint8_t r[REPORT_SIZE])
{
    const SnpIdInfo *id = &guest->id;
    uint32_t flags = FLAG_SIGNING_KEY_VCEK;

    memset(r, 0, REPORT_SIZE);
    snp_put_le32(r + R_VERSION, REPORT_VERSION);
    snp_put_le64(r + R_POLICY, guest->policy);
    if (id->present) {
        snp_put_le32(r + R_GUEST_SVN, id->guest_svn);
        memcpy(r + R_FAMILY_ID, id->family_id, 16);
        memcpy(r + R_IMAGE_ID, id->image_id, 16);
        memcpy(r + R_ID_KEY_DIGEST, id->id_key_digest, 48);
        if (id->author_key_en) {
            flags |= FLAG_AUTHOR_KEY_EN;
            memcpy(r + R_AUTHOR_KEY_DIGEST, id->author_key_digest, 48);
        }
    }
    snp_put_le32(r + R_VMPL, vmpl);
    snp_put_le32(r + R_SIG_ALGO, SIG_ALGO_ECDSA_P384_SHA384);
    snp_put_le64(r + R_CURRENT_TCB, chip->tcb);
    snp_put_le64(r + R_PLATFORM_INFO, SNP_EMU_PLATFORM_INFO);
    snp_put_le32(r + R_FLAGS, flags);
    memcpy(r + R_REPORT_DATA, report_data, 64);
    if (faults && faults->other_report_data) {
        /* A lie only a broken firmware tells: not the requested data. */
        r[R_REPORT_DATA] ^= 0x01;
        r[R_REPORT_DATA + 63] ^= 0x80;
    }
    memcpy(r + R_MEASUREMENT, guest->measurement, 48);
    memcpy(r + R_HOST_DATA, guest->host_data, 32);
    if (!report_id(chip, guest, r + R_REPORT_ID)) {
        return false;
    }
    /* No migration agent: REPORT_ID_MA is all ones. */
    memset(r + R_REPORT_ID_MA, 0xff, 32);
    snp_put_le64(r + R_REPORTED_TCB, chip->tcb);
    cpuid_fms_split(guest->cpuid_fms, &r[R_CPUID_FAM_ID], &r[R_CPUID_MOD_ID],
                    &r[R_CPUID_STEP]);
    memcpy(r + R_CHIP_ID, chip->chip_id, CHIP_ID_LEN);
    snp_put_le64(r + R_COMMITTED_TCB, chip->tcb);
    r[R_CURRENT_BUILD] = SNP_EMU_FW_BUILD;
    r[R_CURRENT_MINOR] = SNP_EMU_FW_MINOR;
    r[R_CURRENT_MAJOR] = SNP_EMU_FW_MAJOR;
    r[R_COMMITTED_BUILD] = SNP_EMU_FW_BUILD;
    r[R_COMMITTED_MINOR] = SNP_EMU_FW_MINOR;
    r[R_COMMITTED_MAJOR] = SNP_EMU_FW_MAJOR;
    snp_put_le64(r + R_LAUNCH_TCB, chip->tcb);
    return sign_report(chip->vcek, r);
}

/*
 * MSG_REPORT_REQ → MSG_REPORT_RSP payload. A request the firmware can parse
 * but not honour (VMPL above 3, a VLEK or reserved KEY_SEL) is answered,
 * as real firmware does, with STATUS = INVALID_PARAM and no report.
 * Returns false only if the emulation itself failed (OpenSSL).
 */
static bool answer_report(const SnpChip *chip, const SnpGuestInfo *guest,
                          const SnpAttestFaults *faults, const uint8_t *req,
                          uint8_t rsp[REPORT_RSP_SIZE], char *note,
                          size_t notelen)
{
    uint32_t vmpl = snp_get_le32(req + RQ_VMPL);
    uint32_t key_sel = snp_get_le32(req + RQ_KEY_SEL) & 3;

    memset(rsp, 0, REPORT_RSP_SIZE);
    /*
     * The caller runs at VMPL0 (the emulated platform has no other VMPL),
     * so every VMPL 0..3 is at or above it and may be requested.
     */
    if (vmpl > 3) {
        snp_put_le32(rsp + RSP_STATUS, SNP_FW_INVALID_PARAM);
        say(note, notelen, "VMPL %u requested (0..3 exist): answered with "
            "status INVALID_PARAM and no report", vmpl);
        return true;
    }
    if (key_sel >= 2) {
        snp_put_le32(rsp + RSP_STATUS, SNP_FW_INVALID_PARAM);
        say(note, notelen, "KEY_SEL %u requested (%s): answered with status "
            "INVALID_PARAM and no report", key_sel,
            key_sel == 2 ? "no VLEK is installed" : "reserved");
        return true;
    }
    if (!build_report(chip, guest, faults, req + RQ_REPORT_DATA, vmpl,
                      rsp + RSP_REPORT)) {
        return false;
    }
    snp_put_le32(rsp + RSP_STATUS, SNP_FW_SUCCESS);
    snp_put_le32(rsp + RSP_REPORT_SIZE, REPORT_SIZE);
    say(note, notelen, "report for VMPL %u%s", vmpl,
        faults && faults->other_report_data ?
        " (fault: other REPORT_DATA signed)" : "");
    return true;
}

/* Firmware status for a failure inside the emulation: "hardware error". */
#define SNP_FW_HWERROR_PLATFORM 0x13

/*
 * SNP_GUEST_REQUEST (56860 §8.26, §7). The firmware:
 *  1. checks the header: ALGO 1, HDR_VERSION 1, SNP_MSG_HDR_LEN 0x60, MSG_VMPCK
 *     0..3 (a VMPCK the guest's VMPL may use: all of them at VMPL0),
 *     MSG_SIZE within the page;
 *  2. checks MSG_SEQNO = the last sequence number of that VMPCK + 1 (the
 *     firmware's counter; AEAD_OFLOW once the 64-bit counter is exhausted);
 *  3. authenticates and decrypts the payload with AES-256-GCM under the
 *     VMPCK (IV = MSG_SEQNO, AAD = header 0x30..0x5F);
 *  4. checks the message type, version and size, and answers;
 *  5. seals the response with MSG_SEQNO + 1 and records that as the last
 *     sequence number.
 * Any refusal returns a firmware error, leaves `resp` untouched and does
 * not advance the sequence number: the firmware moves it only on a
 * successful exchange and accepts only the exact next one (Linux sev-guest,
 * snp_disable_vmpck()), so a guest may resend the same sealed request. The
 * firmware never disables a VMPCK itself (the guest wipes its own copy after
 * a failure); `vmpck_disabled` is honoured when set by the caller. Every
 * malformed, unauthenticated, replayed or unsupported message gets
 * INVALID_PARAM.
 */
uint32_t snp_guest_request(const SnpChip *chip, SnpGuestInfo *guest,
                           const SnpAttestFaults *faults,
                           const uint8_t req[SNP_PAGE_SIZE],
                           uint8_t resp[SNP_PAGE_SIZE],
                           char *log, size_t loglen)
{
    uint8_t plain[MAX_PAYLOAD], tag[TAG_LEN], key[32];
    uint8_t out[SNP_PAGE_SIZE], rsp[REPORT_RSP_SIZE];
    unsigned type = req[SNP_MSG_TYPE], version = req[SNP_MSG_VERSION];
    unsigned vmpck = req[SNP_MSG_VMPCK];
    size_t size = snp_get_le16(req + SNP_MSG_SIZE);
    uint64_t seqno = snp_get_le64(req + SNP_MSG_SEQNO), expected;
    char note[160] = "";
    uint32_t rc = SNP_FW_INVALID_PARAM;

    say(log, loglen, "%s", "");
    if (req[SNP_MSG_ALGO] != ALGO_AES_256_GCM) {
        say(log, loglen, "guest message: algorithm %u is not supported "
            "(1 = AES-256-GCM)", req[SNP_MSG_ALGO]);
        return SNP_FW_INVALID_PARAM;
    }
    if (req[SNP_MSG_HDR_VERSION] != 1 || snp_get_le16(req + SNP_MSG_HDR_SIZE) != SNP_MSG_HDR_LEN) {
        say(log, loglen, "guest message: header version %u, size 0x%x "
            "(version 1, size 0x60 expected)", req[SNP_MSG_HDR_VERSION],
            snp_get_le16(req + SNP_MSG_HDR_SIZE));
        return SNP_FW_INVALID_PARAM;
    }
    if (vmpck > 3) {
        say(log, loglen, "guest message: VMPCK%u does not exist (0..3)",
            vmpck);
        return SNP_FW_INVALID_PARAM;
    }
    if (guest->vmpck_disabled[vmpck]) {
        say(log, loglen, "guest message under VMPCK%u, which is disabled",
            vmpck);
        return SNP_FW_INVALID_PARAM;
    }
    if (size > MAX_PAYLOAD) {
        say(log, loglen, "guest message: payload size %zu is larger than "
            "the %d bytes a page holds", size, MAX_PAYLOAD);
        return SNP_FW_INVALID_PARAM;
    }
    if (guest->seqno[vmpck] >= UINT64_MAX - 1) {
        say(log, loglen, "guest message: the sequence numbers of VMPCK%u "
            "are exhausted", vmpck);
        return SNP_FW_AEAD_OFLOW;
    }
    expected = guest->seqno[vmpck] + 1;
    if (seqno != expected) {
        say(log, loglen, "guest message under VMPCK%u: sequence number "
            "%" PRIu64 " is not the expected %" PRIu64 " (%s)", vmpck, seqno,
            expected, seqno < expected ? "a replayed or stale message"
                                       : "a skipped sequence number");
        return SNP_FW_INVALID_PARAM;
    }

    /* Decrypt from a private copy, with a private copy of the key. */
    memcpy(key, guest->vmpck[vmpck], sizeof(key));
    memcpy(tag, req + SNP_MSG_TAG, TAG_LEN);
    if (!gcm(false, key, seqno, req + SNP_MSG_AAD, req + SNP_MSG_HDR_LEN, size, plain,
             tag)) {
        say(log, loglen, "guest message %" PRIu64 " under VMPCK%u does not "
            "authenticate (altered, or sealed with another key)", seqno,
            vmpck);
        goto out;
    }
    if (type != MSG_REPORT_REQ) {
        say(log, loglen, "guest message %" PRIu64 ": %s (type %u) is not "
            "supported by the emulated firmware (only MSG_REPORT_REQ)", seqno,
            msg_type_name(type), type);
        goto out;
    }
    if (version != 1 || size != REPORT_REQ_SIZE) {
        say(log, loglen, "guest message %" PRIu64 ": MSG_REPORT_REQ version "
            "%u, size %zu (version 1, size %d expected)", seqno, version,
            size, REPORT_REQ_SIZE);
        goto out;
    }
    if (!answer_report(chip, guest, faults, plain, rsp, note, sizeof(note))) {
        fail(log, loglen, "guest message %" PRIu64 ": the emulated firmware "
             "could not sign the report", seqno);
        rc = SNP_FW_HWERROR_PLATFORM;
        goto out;
    }

    /* The response: same VMPCK and version, type + 1, sequence + 1. */
    memset(out, 0, sizeof(out));
    snp_put_le64(out + SNP_MSG_SEQNO, seqno + 1);
    out[SNP_MSG_ALGO] = ALGO_AES_256_GCM;
    out[SNP_MSG_HDR_VERSION] = 1;
    snp_put_le16(out + SNP_MSG_HDR_SIZE, SNP_MSG_HDR_LEN);
    out[SNP_MSG_TYPE] = MSG_REPORT_RSP;
    out[SNP_MSG_VERSION] = version;
    snp_put_le16(out + SNP_MSG_SIZE, REPORT_RSP_SIZE);
    out[SNP_MSG_VMPCK] = vmpck;
    if (!gcm(true, key, seqno + 1, out + SNP_MSG_AAD, rsp, REPORT_RSP_SIZE,
             out + SNP_MSG_HDR_LEN, out + SNP_MSG_TAG)) {
        say(log, loglen, "guest message %" PRIu64 ": the emulated firmware "
            "could not seal the response", seqno);
        rc = SNP_FW_HWERROR_PLATFORM;
        goto out;
    }
    memcpy(resp, out, SNP_PAGE_SIZE);
    guest->seqno[vmpck] = seqno + 1;
    say(log, loglen, "MSG_REPORT_REQ %" PRIu64 " under VMPCK%u answered: %s",
        seqno, vmpck, note);
    rc = SNP_FW_SUCCESS;

out:
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(plain, sizeof(plain));
    OPENSSL_cleanse(rsp, sizeof(rsp));
    return rc;
}
