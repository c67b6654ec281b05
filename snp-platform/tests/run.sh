#!/usr/bin/env bash
# Builds and runs every snp-platform/tests/test-*.c against the pure C half of
# the emulated SEV-SNP platform (src/snp-emu-launch.c, plus
# src/snp-emu-attest.c for tests that use the attestation API).
#
#   snp-platform/tests/run.sh            # all tests
#   snp-platform/tests/run.sh launch     # only test-launch.c
#
# Needs cc and libssl-dev (OpenSSL 3). test-launch.c also needs cargo (it
# compares with `cargo run -p vellum-image -- measure/id-block`) and
# target/vellum.bin, which is built here when missing.
# Prints one line per test program and, last, "N passed, N failed"; exits
# non-zero if anything failed.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -u

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export VELLUM_ROOT="$root"
cd "$here"

# The Rust tool is the reference: the pinned toolchain, then the image.
if command -v cargo >/dev/null; then
    # shellcheck source=../../scripts/setup.sh
    . "$root/scripts/setup.sh"
    VELLUM_SETUP_NEED=none vellum_setup || echo "run.sh: toolchain setup failed; cargo-based checks will fail" >&2
    if [ ! -f "$root/target/vellum.bin" ] && [ -z "${VELLUM_IMAGE:-}" ]; then
        echo "run.sh: building target/vellum.bin (cargo run -p vellum-image -- build)"
        (cd "$root" && cargo run -q -p vellum-image -- build) || echo "run.sh: image build failed" >&2
    fi
else
    echo "run.sh: cargo not found; tests that compare with the Rust tool will fail" >&2
fi

build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT

pass=0
fail=0
for src in test-*.c; do
    [ -e "$src" ] || continue
    name="${src%.c}"
    if [ $# -gt 0 ]; then
        want=0
        for a in "$@"; do
            [ "$name" = "test-$a" ] || [ "$name" = "$a" ] && want=1
        done
        [ "$want" = 1 ] || continue
    fi
    srcs=(../src/snp-emu-launch.c)
    if [ -f ../src/snp-emu-attest.c ] && grep -qE 'snp_(chip_|guest_request)' "$src"; then
        srcs+=(../src/snp-emu-attest.c)
    fi
    echo "== $name"
    if ! cc -std=c11 -Wall -Wextra -Werror -O1 -I../src -o "$build/$name" "$src" "${srcs[@]}" -lcrypto; then
        echo "== $name: FAILED (does not compile)"
        fail=$((fail + 1))
    elif "$build/$name"; then
        echo "== $name: passed"
        pass=$((pass + 1))
    else
        echo "== $name: FAILED"
        fail=$((fail + 1))
    fi
done

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
