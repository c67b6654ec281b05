/*
 * What every snp-platform C test shares: the check counter, file reading.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef VELLUM_SNP_TEST_COMMON_H
#define VELLUM_SNP_TEST_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int passed, failed;

/* Prints one check's result and counts it. */
static void __attribute__((format(printf, 2, 3))) check(bool ok, const char *fmt, ...)
{
    va_list ap;

    printf("%s ", ok ? "  ok  " : "  FAIL");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    if (ok) {
        passed++;
    } else {
        failed++;
    }
}

/* The whole file at `path` (malloc()ed; *len its size), or NULL. */
static inline uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    long n;

    *len = 0;
    if (!f) {
        return NULL;
    }
    n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (n > 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc(n);
        if (buf && fread(buf, 1, n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        *len = buf ? (size_t)n : 0;
    }
    fclose(f);
    return buf;
}

#endif
