/*
 * What every snp-platform C test shares: the check counter.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef VELLUM_SNP_TEST_COMMON_H
#define VELLUM_SNP_TEST_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

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

#endif
