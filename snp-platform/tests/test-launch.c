/*
 * Tests of snp-emu-launch.c: the launch digest of the real Vellum image
 * against `image measure`, the VMSA layout, the ID block check against
 * `image id-block`, and the secrets page.
 *
 * Run by run.sh (which sets VELLUM_ROOT); needs cargo for the reference
 * values and target/vellum.bin (run.sh builds it when missing).
 * VELLUM_IMAGE overrides the image path.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _XOPEN_SOURCE 700

#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "snp-emu-pure.h"
#include "test-common.h"



/* ---------------------------------------------------------------- utilities */

/* The repository root, absolute: $VELLUM_ROOT, else ../.. of the cwd. */
static const char *root_dir(void)
{
    static char root[4096];
    const char *r = getenv("VELLUM_ROOT");

    if (!root[0] && !realpath(r && *r ? r : "../..", root)) {
        snprintf(root, sizeof(root), "%s", r && *r ? r : "../..");
    }
    return root;
}


/* Runs a shell command in the repository root; returns its stdout or NULL. */
static char *run(const char *fmt, ...)
{
    char args[2048], cmd[4096];
    size_t cap = 1 << 16, len = 0, n;
    char *out = malloc(cap);
    va_list ap;
    FILE *p;

    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "cd '%s' && %s", root_dir(), args);
    p = popen(cmd, "r");
    if (!p || !out) {
        free(out);
        return NULL;
    }
    while ((n = fread(out + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 4096) {
            cap *= 2;
            out = realloc(out, cap);
            if (!out) {
                pclose(p);
                return NULL;
            }
        }
    }
    out[len] = '\0';
    if (pclose(p) != 0) {
        fprintf(stderr, "command failed: %s\n", cmd);
        free(out);
        return NULL;
    }
    return out;
}

/* The string value of "key": "..." in a flat JSON text (first match). */
static bool json_str(const char *json, const char *key, char *out, size_t cap)
{
    char pat[128];
    const char *p, *e;

    snprintf(pat, sizeof(pat), "\"%s\": \"", key);
    p = json ? strstr(json, pat) : NULL;
    if (!p) {
        return false;
    }
    p += strlen(pat);
    e = strchr(p, '"');
    if (!e || (size_t)(e - p) >= cap) {
        return false;
    }
    memcpy(out, p, e - p);
    out[e - p] = '\0';
    return true;
}

static bool unhex(const char *s, uint8_t *out, size_t len)
{
    if (strlen(s) != 2 * len) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned v;

        if (!isxdigit((unsigned char)s[2 * i]) ||
            !isxdigit((unsigned char)s[2 * i + 1]) ||
            sscanf(s + 2 * i, "%2x", &v) != 1) {
            return false;
        }
        out[i] = v;
    }
    return true;
}

static void tohex(const uint8_t *d, size_t len, char *out)
{
    for (size_t i = 0; i < len; i++) {
        sprintf(out + 2 * i, "%02x", d[i]);
    }
}

/* Decodes base64 into out (cap bytes); returns the length or -1. */
static int unbase64(const char *s, uint8_t *out, size_t cap)
{
    size_t n = strlen(s);
    int len, pad = 0;
    uint8_t *tmp;

    if (n % 4) {
        return -1;
    }
    if (n && s[n - 1] == '=') {
        pad++;
    }
    if (n > 1 && s[n - 2] == '=') {
        pad++;
    }
    /* EVP_DecodeBlock writes the padding's zero bytes too. */
    tmp = malloc(n / 4 * 3 + 1);
    len = tmp ? EVP_DecodeBlock(tmp, (const unsigned char *)s, n) : -1;
    if (len < pad || (size_t)(len - pad) > cap) {
        free(tmp);
        return -1;
    }
    memcpy(out, tmp, len - pad);
    free(tmp);
    return len - pad;
}

static void sha384(const uint8_t *d, size_t len, uint8_t out[48])
{
    unsigned n;

    EVP_Digest(d, len, out, &n, EVP_sha384(), NULL);
}




/*
 * A GUID's bytes as stored in firmware tables: the first three fields
 * little-endian, the last two as written (docs/snp-reference.md §1.2).
 */
static void guid_bytes(const char *text, uint8_t out[16])
{
    unsigned a, b, c, d[8];

    sscanf(text, "%8x-%4x-%4x-%2x%2x-%2x%2x%2x%2x%2x%2x", &a, &b, &c,
           &d[0], &d[1], &d[2], &d[3], &d[4], &d[5], &d[6], &d[7]);
    out[0] = a;
    out[1] = a >> 8;
    out[2] = a >> 16;
    out[3] = a >> 24;
    out[4] = b;
    out[5] = b >> 8;
    out[6] = c;
    out[7] = c >> 8;
    for (int i = 0; i < 8; i++) {
        out[8 + i] = d[i];
    }
}

/* ---------------------------------------------------------------- image */

#define FOOTER_GUID "96b582de-1fb2-45f7-baea-a366c55a082d"
#define SEV_INFO_GUID "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
#define SEV_METADATA_GUID "dc886566-984a-4798-a75e-5585a7bf67cc"
#define MAX_SECTIONS 16

typedef struct Section {
    uint32_t base, len, type;
} Section;

typedef struct Image {
    uint8_t *bytes;
    size_t len;
    uint32_t ap_reset_addr;
    Section sec[MAX_SECTIONS];
    int nsec;
} Image;

/*
 * The data of the table entry with `guid`, or NULL
 * (docs/snp-reference.md §1.2).
 */
static const uint8_t *table_entry(const Image *im, const char *guid,
                                  size_t *len)
{
    uint8_t want[16], footer[16];
    size_t footer_at = im->len - 48, start, pos;
    uint16_t total;

    guid_bytes(FOOTER_GUID, footer);
    guid_bytes(guid, want);
    if (im->len < 64 || memcmp(im->bytes + footer_at, footer, 16) != 0) {
        return NULL;
    }
    /* Total length covers the entries, the u16 itself and the footer GUID. */
    total = snp_get_le16(im->bytes + footer_at - 2);
    if (total < 18 || total > footer_at + 16) {
        return NULL;
    }
    start = footer_at + 16 - total;
    pos = footer_at - 2; /* end of the last entry */
    while (pos >= start + 18) {
        const uint8_t *g = im->bytes + pos - 16;
        uint16_t elen = snp_get_le16(im->bytes + pos - 18);

        if (elen < 18 || elen > pos - start) {
            return NULL;
        }
        if (memcmp(g, want, 16) == 0) {
            *len = elen - 18;
            return im->bytes + pos - elen;
        }
        pos -= elen;
    }
    return NULL;
}

static bool parse_image(Image *im)
{
    const uint8_t *info, *meta, *hdr;
    size_t ilen, mlen;
    uint32_t off, hlen, n;

    info = table_entry(im, SEV_INFO_GUID, &ilen);
    meta = table_entry(im, SEV_METADATA_GUID, &mlen);
    if (!info || ilen < 4 || !meta || mlen < 4) {
        return false;
    }
    im->ap_reset_addr = snp_get_le32(info);
    /* The metadata entry is the ASEV header's offset from the file end. */
    off = snp_get_le32(meta);
    if (off < 16 || off > im->len) {
        return false;
    }
    hdr = im->bytes + im->len - off;
    hlen = snp_get_le32(hdr + 4);
    n = snp_get_le32(hdr + 12);
    if (memcmp(hdr, "ASEV", 4) != 0 || snp_get_le32(hdr + 8) != 1 ||
        hlen != 16 + 12 * n || hlen > off || n > MAX_SECTIONS) {
        return false;
    }
    im->nsec = n;
    for (uint32_t i = 0; i < n; i++) {
        im->sec[i].base = snp_get_le32(hdr + 16 + 12 * i);
        im->sec[i].len = snp_get_le32(hdr + 16 + 12 * i + 4);
        im->sec[i].type = snp_get_le32(hdr + 16 + 12 * i + 8);
    }
    return true;
}

static void seg(SnpVmsaSeg *s, uint16_t sel, uint16_t attrib, uint32_t limit,
                uint64_t base)
{
    s->selector = sel;
    s->attrib = attrib;
    s->limit = limit;
    s->base = base;
}

/*
 * QEMU's x86 reset state as KVM puts it in a VMSA
 * (docs/snp-reference.md §1.5).
 */
static void reset_state(SnpVmsaState *s, uint32_t reset_addr, uint32_t sig)
{
    memset(s, 0, sizeof(*s));
    seg(&s->es, 0, 0x93, 0xffff, 0);
    seg(&s->cs, 0xf000, 0x9b, 0xffff, reset_addr & 0xffff0000);
    seg(&s->ss, 0, 0x93, 0xffff, 0);
    seg(&s->ds, 0, 0x93, 0xffff, 0);
    seg(&s->fs, 0, 0x93, 0xffff, 0);
    seg(&s->gs, 0, 0x93, 0xffff, 0);
    seg(&s->gdtr, 0, 0, 0xffff, 0);
    seg(&s->ldtr, 0, 0x82, 0xffff, 0);
    seg(&s->idtr, 0, 0, 0xffff, 0);
    seg(&s->tr, 0, 0x8b, 0xffff, 0);
    s->efer = 0x1000;
    s->cr0 = 0x10;
    s->cr4 = 0x40;
    s->dr6 = 0xffff0ff0;
    s->dr7 = 0x400;
    s->rflags = 0x2;
    s->rip = reset_addr & 0xffff;
    s->rdx = sig;
    s->g_pat = 0x0007040600070406ULL;
    s->xcr0 = 0x1;
    s->mxcsr = 0x1f80;
    s->x87_fcw = 0x37f;
    s->sev_features = 0x1;
}

/*
 * The launch digest as QEMU 10 + KVM drive the firmware
 * (docs/snp-reference.md §1.4).
 */
static bool measure(const Image *im, int vcpus, uint32_t sig,
                    uint8_t image_ld[48], uint8_t ld[48])
{
    SnpLaunchDigest d;
    uint64_t gpa = 0x100000000ULL - im->len;
    uint8_t vmsa[SNP_PAGE_SIZE];
    SnpVmsaState st;

    snp_ld_init(&d);
    for (size_t off = 0; off < im->len; off += SNP_PAGE_SIZE) {
        if (snp_ld_update(&d, gpa + off, SNP_PAGE_NORMAL, im->bytes + off)) {
            return false;
        }
    }
    memcpy(image_ld, d.ld, 48);
    for (int i = 0; i < im->nsec; i++) {
        const Section *s = &im->sec[i];
        int type;

        switch (s->type) {
        case 1:
            type = SNP_PAGE_ZERO;
            break;
        case 2:
            type = SNP_PAGE_SECRETS;
            break;
        case 3:
            type = SNP_PAGE_CPUID;
            break;
        default:
            return false;
        }
        for (uint32_t off = 0; off < s->len; off += SNP_PAGE_SIZE) {
            if (snp_ld_update(&d, (uint64_t)s->base + off, type, NULL)) {
                return false;
            }
        }
    }
    for (int cpu = 0; cpu < vcpus; cpu++) {
        reset_state(&st, cpu == 0 ? 0xfffffff0 : im->ap_reset_addr, sig);
        snp_vmsa_build(&st, vmsa);
        /* The GPA passed here is ignored for VMSA pages. */
        if (snp_ld_update(&d, 0, SNP_PAGE_VMSA, vmsa)) {
            return false;
        }
    }
    memcpy(ld, d.ld, 48);
    return true;
}

/* ---------------------------------------------------------------- tests */

static void test_page_info(void)
{
    uint8_t page[SNP_PAGE_SIZE], info[0x70], want[48];
    SnpLaunchDigest d, e;

    printf("PAGE_INFO chain\n");
    memset(page, 0xa5, sizeof(page));
    snp_ld_init(&d);
    check(snp_ld_update(&d, 0xfffff000, SNP_PAGE_NORMAL, page) == 0,
          "NORMAL update succeeds");
    /* Built by hand from 56860 §8.17.2. */
    memset(info, 0, sizeof(info));
    sha384(page, sizeof(page), info + 0x30);
    info[0x60] = 0x70;
    info[0x62] = 1;
    info[0x68] = 0x00;
    info[0x69] = 0xf0;
    info[0x6a] = 0xff;
    info[0x6b] = 0xff;
    sha384(info, sizeof(info), want);
    check(memcmp(d.ld, want, 48) == 0,
          "first NORMAL step = SHA-384(PAGE_INFO)");

    /* A SECRETS page: contents zero, previous digest chained in. */
    memcpy(info, d.ld, 48);
    memset(info + 0x30, 0, 48);
    info[0x62] = 5;
    memset(info + 0x68, 0, 8);
    info[0x69] = 0x10;
    sha384(info, sizeof(info), want);
    check(snp_ld_update(&d, 0x1000, SNP_PAGE_SECRETS, NULL) == 0 &&
          memcmp(d.ld, want, 48) == 0,
          "SECRETS step chains the digest, contents zero");

    /* VMSA: measured at 0xFFFFFFFFF000 whatever GPA is passed. */
    memcpy(info, d.ld, 48);
    sha384(page, sizeof(page), info + 0x30);
    info[0x62] = 2;
    memcpy(info + 0x68, "\x00\xf0\xff\xff\xff\xff\x00\x00", 8);
    sha384(info, sizeof(info), want);
    check(snp_ld_update(&d, 0x5000, SNP_PAGE_VMSA, page) == 0 &&
          memcmp(d.ld, want, 48) == 0, "VMSA step uses GPA 0xFFFFFFFFF000");

    e = d;
    check(snp_ld_update(&d, 0x1000, 9, page) < 0 &&
          snp_ld_update(&d, 0x1000, SNP_PAGE_NORMAL, NULL) < 0 &&
          snp_ld_update(&d, 0x1008, SNP_PAGE_ZERO, NULL) < 0 &&
          memcmp(d.ld, e.ld, 48) == 0,
          "bad type, missing contents, unaligned GPA refused, digest kept");
}

static void test_vmsa_layout(void)
{
    uint8_t p[SNP_PAGE_SIZE];
    SnpVmsaState s;
    SnpVmsaSeg *segs[] = { &s.es, &s.cs, &s.ss, &s.ds, &s.fs, &s.gs,
                           &s.gdtr, &s.ldtr, &s.idtr, &s.tr };
    struct {
        const char *name;
        uint64_t *field;
        size_t off;
    } regs[] = {
        { "efer", &s.efer, 0xd0 },     { "xss", &s.xss, 0x140 },
        { "cr4", &s.cr4, 0x148 },      { "cr3", &s.cr3, 0x150 },
        { "cr0", &s.cr0, 0x158 },      { "dr7", &s.dr7, 0x160 },
        { "dr6", &s.dr6, 0x168 },      { "rflags", &s.rflags, 0x170 },
        { "rip", &s.rip, 0x178 },      { "rsp", &s.rsp, 0x1d8 },
        { "rax", &s.rax, 0x1f8 },      { "g_pat", &s.g_pat, 0x268 },
        { "rcx", &s.rcx, 0x308 },      { "rdx", &s.rdx, 0x310 },
        { "rbx", &s.rbx, 0x318 },      { "rbp", &s.rbp, 0x328 },
        { "rsi", &s.rsi, 0x330 },      { "rdi", &s.rdi, 0x338 },
        { "sev_features", &s.sev_features, 0x3b0 },
        { "xcr0", &s.xcr0, 0x3e8 },
    };
    uint8_t mask[SNP_PAGE_SIZE];
    bool ok = true;

    printf("VMSA layout (APM vol. 2 table B-4)\n");
    memset(&s, 0, sizeof(s));
    memset(mask, 0, sizeof(mask));
    for (size_t i = 0; i < 10; i++) {
        seg(segs[i], 0x1100 + i, 0x2200 + i, 0x33330000 + i,
            0x4444444400000000ULL + i);
        memset(mask + 16 * i, 1, 16);
    }
    for (size_t i = 0; i < sizeof(regs) / sizeof(regs[0]); i++) {
        *regs[i].field = 0x8070605040302000ULL + i;
        memset(mask + regs[i].off, 1, 8);
    }
    s.mxcsr = 0x11223344;
    s.x87_fcw = 0x5566;
    memset(mask + 0x408, 1, 4);
    memset(mask + 0x410, 1, 2);
    memset(p, 0xee, sizeof(p));
    snp_vmsa_build(&s, p);

    for (size_t i = 0; i < 10; i++) {
        const uint8_t *q = p + 16 * i;

        ok &= snp_get_le16(q) == 0x1100 + i && snp_get_le16(q + 2) == 0x2200 + i &&
              snp_get_le32(q + 4) == 0x33330000 + i &&
              snp_get_le64(q + 8) == 0x4444444400000000ULL + i;
    }
    check(ok, "ten segment registers at 0x00..0x9F (sel, attrib, limit, base)");
    for (size_t i = 0; i < sizeof(regs) / sizeof(regs[0]); i++) {
        check(snp_get_le64(p + regs[i].off) == 0x8070605040302000ULL + i,
              "%s at 0x%zx", regs[i].name, regs[i].off);
    }
    check(snp_get_le32(p + 0x408) == 0x11223344, "mxcsr at 0x408");
    check(snp_get_le16(p + 0x410) == 0x5566, "x87 fcw at 0x410");
    check(p[0xca] == 0 && p[0xcb] == 0, "vmpl (0xca) and cpl (0xcb) are 0");
    ok = true;
    for (size_t i = 0; i < sizeof(p); i++) {
        ok &= mask[i] || p[i] == 0;
    }
    check(ok, "every other byte of the page is zero");

    /* The BSP as the reference lists it. */
    reset_state(&s, 0xfffffff0, 0x800f12);
    snp_vmsa_build(&s, p);
    check(memcmp(p + 0x10, "\x00\xf0\x9b\x00\xff\xff\x00\x00"
                           "\x00\x00\xff\xff\x00\x00\x00\x00", 16) == 0 &&
          snp_get_le64(p + 0x178) == 0xfff0 && snp_get_le64(p + 0xd0) == 0x1000 &&
          snp_get_le64(p + 0x310) == 0x800f12 && snp_get_le64(p + 0x3b0) == 1,
          "BSP reset VMSA: CS f000/9b/ffff/ffff0000, RIP fff0, EFER, RDX, "
          "SEV_FEATURES");
}

static const struct {
    const char *name;
    uint32_t sig;
} models[] = {
    { "EPYC-v4", 0x800f12 },
    { "EPYC-Milan", 0xa00f11 },
};

static bool test_image(Image *im, char *image_path, uint8_t ld_1_v4[48])
{
    char *json;
    char hex[97], want[128], frag[160];
    uint8_t ld[48], image_ld[48], ref[48];
    bool have = false;

    printf("launch digest of %s\n", image_path);
    im->bytes = read_file(image_path, &im->len);
    check(im->bytes != NULL, "image readable (build it with `cargo run -p "
          "vellum-image -- build`)");
    if (!im->bytes) {
        return false;
    }
    check(im->len % 0x10000 == 0 && parse_image(im),
          "image is 64 KiB aligned with a footer table, SEV info block and "
          "ASEV metadata");
    if (!im->nsec) {
        return false;
    }
    printf("       %zu bytes at 0x%" PRIx64 ", AP reset 0x%x, %d sections\n",
           im->len, (uint64_t)(0x100000000ULL - im->len), im->ap_reset_addr,
           im->nsec);

    for (int vcpus = 1; vcpus <= 2; vcpus++) {
        for (size_t m = 0; m < 2; m++) {
            json = run("cargo run -q -p vellum-image -- measure --image '%s' "
                       "--vcpus %d --vcpu-type %s --format json", image_path,
                       vcpus, models[m].name);
            check(json != NULL, "`image measure --vcpus %d --vcpu-type %s` "
                  "ran", vcpus, models[m].name);
            if (!json) {
                continue;
            }
            if (!measure(im, vcpus, models[m].sig, image_ld, ld)) {
                check(false, "C measurement ran");
                free(json);
                continue;
            }
            tohex(ld, 48, hex);
            check(json_str(json, "launch_digest", want, sizeof(want)) &&
                  strcmp(want, hex) == 0,
                  "%d vCPU %s: launch digest %s (image measure: %s)", vcpus,
                  models[m].name, hex, want);
            tohex(image_ld, 48, hex);
            check(json_str(json, "image_digest", want, sizeof(want)) &&
                  strcmp(want, hex) == 0, "  image-pages digest agrees");
            snprintf(frag, sizeof(frag), "0x%x", im->ap_reset_addr);
            check(json_str(json, "ap_reset_addr", want, sizeof(want)) &&
                  strcmp(want, frag) == 0, "  AP reset address agrees");
            snprintf(frag, sizeof(frag), "0x%x", models[m].sig);
            check(json_str(json, "vcpu_sig", want, sizeof(want)) &&
                  strcmp(want, frag) == 0, "  vCPU signature agrees");
            {
                const char *p = json;
                bool ok = true;

                for (int i = 0; i < im->nsec && ok; i++) {
                    snprintf(frag, sizeof(frag),
                             "\"base\": \"0x%x\", \"len\": \"0x%x\"",
                             im->sec[i].base, im->sec[i].len);
                    p = strstr(p, frag);
                    ok = p != NULL;
                }
                check(ok, "  %d metadata sections agree, in order", im->nsec);
            }
            if (vcpus == 1 && m == 0) {
                memcpy(ld_1_v4, ld, 48);
                have = true;
            }
            free(json);
        }
    }
    /* Distinct inputs give distinct digests. */
    if (have && measure(im, 1, models[1].sig, image_ld, ref)) {
        check(memcmp(ref, ld_1_v4, 48) != 0,
              "EPYC-Milan and EPYC-v4 digests differ");
    }
    return have;
}

typedef struct Signed {
    uint8_t block[96];
    uint8_t auth[4096];
    int block_len, auth_len;
    uint8_t id_digest[48], author_digest[48];
    bool has_author;
} Signed;

static bool id_block(Signed *s, const char *fmt, ...)
{
    char args[1024], b64[8192], hex[128];
    char *json;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    memset(s, 0, sizeof(*s));
    json = run("cargo run -q -p vellum-image -- id-block --format json %s",
               args);
    if (!json) {
        return false;
    }
    bool ok = json_str(json, "id_block", b64, sizeof(b64)) &&
              (s->block_len = unbase64(b64, s->block, sizeof(s->block))) ==
                  96 &&
              json_str(json, "id_auth", b64, sizeof(b64)) &&
              (s->auth_len = unbase64(b64, s->auth, sizeof(s->auth))) ==
                  4096 &&
              json_str(json, "id_key_digest", hex, sizeof(hex)) &&
              unhex(hex, s->id_digest, 48);
    if (ok && json_str(json, "author_key_digest", hex, sizeof(hex))) {
        s->has_author = unhex(hex, s->author_digest, 48);
        ok = s->has_author;
    }
    free(json);
    return ok;
}

static int idc(const Signed *s, bool author, const uint8_t *ld,
               uint64_t policy, SnpIdInfo *info, char *err, size_t errlen)
{
    return snp_id_check(s->block, s->block_len, s->auth, s->auth_len, author,
                        ld, policy, info, err, errlen);
}

static void test_id_block(const char *image_path, const uint8_t ld[48])
{
    static const uint8_t zero48[48];
    char dir[] = "/tmp/snp-test-launch-XXXXXX";
    char err[512], *out;
    const char *launch = "--vcpus 1 --vcpu-type EPYC-v4";
    Signed plain, author, other, pol;
    SnpIdInfo info;
    uint8_t bad_ld[48], fam[16], img[16];
    Signed t;

    printf("ID block check\n");
    if (!mkdtemp(dir)) {
        check(false, "mkdtemp");
        return;
    }
    out = run("cargo run -q -p vellum-image -- id-block --gen-key %s/id.pem "
              ">/dev/null 2>&1 && cargo run -q -p vellum-image -- id-block "
              "--gen-key %s/author.pem >/dev/null 2>&1 && cargo run -q -p "
              "vellum-image -- id-block --gen-key %s/other.pem >/dev/null 2>&1",
              dir, dir, dir);
    check(out != NULL, "`image id-block --gen-key` made three P-384 keys");
    free(out);

    check(id_block(&plain, "--image '%s' %s --id-key %s/id.pem", image_path,
                   launch, dir),
          "`image id-block --id-key` output parsed (96 + 4096 bytes)");
    check(id_block(&author, "--image '%s' %s --id-key %s/id.pem --author-key "
                   "%s/author.pem --family-id 00112233445566778899aabbccddeeff"
                   " --image-id ffeeddccbbaa99887766554433221100 "
                   "--guest-svn 7", image_path, launch, dir, dir) &&
          author.has_author,
          "`image id-block --author-key` output parsed");
    check(id_block(&other, "--image '%s' %s --id-key %s/other.pem",
                   image_path, launch, dir), "a third key's ID auth parsed");
    check(id_block(&pol, "--image '%s' %s --id-key %s/id.pem --policy "
                   "0x130000", image_path, launch, dir),
          "ID block for policy 0x130000 parsed");

    /* Accepted. */
    err[0] = 0;
    check(idc(&plain, false, ld, 0x30000, &info, err, sizeof(err)) == 0,
          "accepted without author key %s", err);
    check(info.present && !info.author_key_en &&
          memcmp(info.id_key_digest, plain.id_digest, 48) == 0 &&
          memcmp(info.author_key_digest, zero48, 48) == 0 &&
          info.guest_svn == 0,
          "ID info: ID key digest = image id-block's, no author digest");

    err[0] = 0;
    check(idc(&author, true, ld, 0x30000, &info, err, sizeof(err)) == 0,
          "accepted with author key %s", err);
    unhex("00112233445566778899aabbccddeeff", fam, 16);
    unhex("ffeeddccbbaa99887766554433221100", img, 16);
    check(info.present && info.author_key_en &&
          memcmp(info.id_key_digest, plain.id_digest, 48) == 0 &&
          memcmp(info.author_key_digest, author.author_digest, 48) == 0 &&
          memcmp(info.family_id, fam, 16) == 0 &&
          memcmp(info.image_id, img, 16) == 0 && info.guest_svn == 7,
          "ID info: both key digests, family/image id, guest SVN 7");
    check(idc(&author, false, ld, 0x30000, &info, err, sizeof(err)) == 0 &&
          !info.author_key_en &&
          memcmp(info.author_key_digest, zero48, 48) == 0,
          "author fields ignored without author-key-enabled");
    check(idc(&pol, false, ld, 0x130000, &info, err, sizeof(err)) == 0,
          "policy 0x130000 block accepted for a 0x130000 launch");
    /* QEMU allows a shorter id-auth: the tail is zero. */
    t = plain;
    t.auth_len = 0xc84;
    check(idc(&t, false, ld, 0x30000, &info, err, sizeof(err)) == 0,
          "a 0xC84-byte id-auth (zero tail) is accepted");

    /* Refused. */
    memcpy(bad_ld, ld, 48);
    bad_ld[47] ^= 1;
    check(idc(&plain, false, bad_ld, 0x30000, &info, err, sizeof(err)) < 0 &&
          !info.present && strstr(err, "launch digest") &&
          strstr(err, "image id-block"),
          "other measurement refused: %.110s...", err);
    check(idc(&plain, false, ld, 0x30000 | (1 << 19), &info, err,
              sizeof(err)) < 0 && strstr(err, "policy"),
          "other policy refused: %s", err);
    check(idc(&pol, false, ld, 0x30000, &info, err, sizeof(err)) < 0 &&
          strstr(err, "policy"), "policy 0x130000 block refused for 0x30000");

    t = plain;
    t.auth[0x40] ^= 0x01; /* ID_BLOCK_SIG.R, least significant byte */
    check(idc(&t, false, ld, 0x30000, &info, err, sizeof(err)) < 0 &&
          strstr(err, "signature"), "flipped R byte refused: %.80s...", err);
    t = plain;
    t.auth[0x40 + 0x48 + 20] ^= 0x80; /* ID_BLOCK_SIG.S */
    check(idc(&t, false, ld, 0x30000, &info, err, sizeof(err)) < 0,
          "flipped S byte refused");
    t = plain;
    t.auth[0x40 + 0x48 + 60] = 1; /* beyond P-384's 48 bytes */
    check(idc(&t, false, ld, 0x30000, &info, err, sizeof(err)) < 0,
          "non-zero padding in the signature refused");
    t = plain;
    t.block[0x30] ^= 0x01; /* family id changed after signing */
    check(idc(&t, false, ld, 0x30000, &info, err, sizeof(err)) < 0,
          "altered ID block refused");
    t = plain;
    memcpy(t.auth + 0x240, other.auth + 0x240, 0x404); /* other ID key */
    check(idc(&t, false, ld, 0x30000, &info, err, sizeof(err)) < 0,
          "ID key swapped for another key refused");
    t = plain;
    t.auth[0x244] ^= 0x01; /* QX: not on the curve any more */
    check(idc(&t, false, ld, 0x30000, &info, err, sizeof(err)) < 0,
          "ID key off the curve refused");
    t = plain;
    t.auth[0x240] = 1; /* curve 1: P-256 */
    check(idc(&t, false, ld, 0x30000, &info, err, sizeof(err)) < 0,
          "ID key curve other than P-384 refused");
    t = plain;
    t.auth[0] = 2;
    check(idc(&t, false, ld, 0x30000, &info, err, sizeof(err)) < 0,
          "ID_KEY_ALGO other than 1 refused");
    t = plain;
    t.block[0x50] = 2;
    check(idc(&t, false, ld, 0x30000, &info, err, sizeof(err)) < 0,
          "ID block VERSION other than 1 refused");

    check(idc(&plain, true, ld, 0x30000, &info, err, sizeof(err)) < 0 &&
          strstr(err, "author"), "author-key-enabled without author key "
          "refused: %.70s...", err);
    t = author;
    t.auth[0x680 + 5] ^= 0x04; /* ID_KEY_SIG.R */
    check(idc(&t, true, ld, 0x30000, &info, err, sizeof(err)) < 0 &&
          strstr(err, "author"), "flipped author signature byte refused: "
          "%.70s...", err);
    t = author;
    memcpy(t.auth + 0x880, other.auth + 0x240, 0x404); /* wrong author key */
    check(idc(&t, true, ld, 0x30000, &info, err, sizeof(err)) < 0,
          "author signature by another key refused");
    t = author; /* author's fields kept, the other key's block and ID key */
    memcpy(t.block, other.block, 96);
    memcpy(t.auth + 0x240, other.auth + 0x240, 0x404);
    memcpy(t.auth + 0x40, other.auth + 0x40, 0x200);
    check(idc(&t, true, ld, 0x30000, &info, err, sizeof(err)) < 0,
          "a validly self-signed block whose ID key the author did not sign "
          "refused");
    check(idc(&t, false, ld, 0x30000, &info, err, sizeof(err)) == 0,
          "  (the same block passes without author-key-enabled)");

    t = plain;
    check(snp_id_check(t.block, 95, t.auth, 4096, false, ld, 0x30000, &info,
                       err, sizeof(err)) < 0 &&
          snp_id_check(t.block, 96, t.auth, 4097, false, ld, 0x30000, &info,
                       err, sizeof(err)) < 0 &&
          snp_id_check(t.block, 96, t.auth, 0, false, ld, 0x30000, &info,
                       err, sizeof(err)) < 0,
          "wrong structure lengths refused");
    check(snp_id_check(plain.block, 96, plain.auth, 4096, false, ld, 0x30000,
                       NULL, NULL, 0) == 0 &&
          snp_id_check(plain.block, 96, plain.auth, 4096, false, bad_ld,
                       0x30000, NULL, err, 8) < 0 && strlen(err) == 7,
          "NULL info/err accepted; err truncated to its size");

    out = run("rm -rf '%s'", dir);
    free(out);
}

static void test_secrets(void)
{
    uint8_t a[SNP_PAGE_SIZE], b[SNP_PAGE_SIZE];
    uint8_t ka[4][32], kb[4][32];
    static const uint8_t zero[32];
    bool ok = true;

    printf("secrets page\n");
    memset(a, 0xcc, sizeof(a));
    check(snp_secrets_fill(a, ka) == 0 && snp_secrets_fill(b, kb) == 0,
          "two fills succeed");
    check(snp_get_le32(a) == 3 && snp_get_le32(b) == 3, "version 3 at 0x00");
    check(snp_get_le32(a + 4) == 0 && snp_get_le32(a + 8) == 0 &&
          memcmp(a + 0x10, zero, 16) == 0, "imi_en, FMS and gosvw are zero");
    for (int i = 0; i < 4; i++) {
        ok &= memcmp(a + 0x20 + 32 * i, ka[i], 32) == 0 &&
              memcmp(b + 0x20 + 32 * i, kb[i], 32) == 0;
    }
    check(ok, "copied VMPCK0..3 equal the page's at 0x20, 0x40, 0x60, 0x80");
    ok = true;
    for (int i = 0; i < 4; i++) {
        ok &= memcmp(ka[i], zero, 32) != 0 && memcmp(kb[i], zero, 32) != 0;
        for (int j = 0; j < 4; j++) {
            ok &= memcmp(ka[i], kb[j], 32) != 0;
            ok &= i == j || memcmp(ka[i], ka[j], 32) != 0;
        }
    }
    check(ok, "keys non-zero, distinct within a page and across two fills");
    ok = true;
    for (size_t i = 0xa0; i < sizeof(a); i++) {
        ok &= a[i] == 0;
    }
    check(ok && snp_get_le32(a + 0xc) == 0, "the rest of the page is zero");
}

int main(void)
{
    char image_path[4096];
    const char *env = getenv("VELLUM_IMAGE");
    uint8_t ld[48];
    Image im;

    memset(&im, 0, sizeof(im));
    if (env && *env) {
        /* Absolute: the cargo commands run in the repository root. */
        if (!realpath(env, image_path)) {
            snprintf(image_path, sizeof(image_path), "%s", env);
        }
    } else {
        snprintf(image_path, sizeof(image_path), "%s/target/vellum.bin",
                 root_dir());
    }

    test_page_info();
    test_vmsa_layout();
    if (test_image(&im, image_path, ld)) {
        test_id_block(image_path, ld);
    } else {
        check(false, "ID block tests need the image's measurement");
    }
    test_secrets();
    free(im.bytes);

    printf("test-launch: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
