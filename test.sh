#!/usr/bin/env bash
# The test command (README, CI): formatting, lints, host tests, the image, and
# the guest tests that boot it under QEMU and talk to it with real clients.
# Sets up what it needs first (pinned toolchain; QEMU, curl, openssl, python3-venv
# when run as root, else it says what to install).
#
# Then the emulated SEV-SNP platform (snp-platform/): its build (QEMU 10.0.2 from
# source with our patch: about 3 minutes on 2 cores the first time, cached
# after), its C unit tests, and the guest tests again on it.
#
#   ./test.sh            everything
#   ./test.sh --quick    host checks only (no image, no QEMU)
#   ./test.sh --no-snp   everything but the emulated SEV-SNP platform
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
QUICK=0 SNP=1
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1;;
    --no-snp) SNP=0;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "test.sh: unknown option $a: use --quick, --no-snp or nothing (see --help)." >&2; exit 2;;
  esac
done

# shellcheck source=scripts/setup.sh
. scripts/setup.sh
VELLUM_SETUP_NEED="qemu curl openssl python iproute" vellum_setup

# shellcheck disable=SC2054  # -Zbuild-std takes a comma-separated list
BARE=(--target x86_64-vellum.json -Zbuild-std=core,alloc
      -Zbuild-std-features=compiler-builtins-mem -Zjson-target-spec)
step() { printf '\n== %s\n' "$*"; }
# Under CI a check that cannot run is a failure, never a skip.
IN_CI=0
[ "${CI:-}" = true ] && IN_CI=1
# Cargo.lock is part of the build: a drifting lock file fails here instead of
# dirtying the tree (which would skip the reproducibility check).
LOCKED=--locked
t0=$(date +%s)

step "cargo fmt --check"
cargo fmt --all -- --check

step "unsafe only where docs/ARCHITECTURE.md allows it"
scripts/check-unsafe.sh

step "clippy, host crates"
cargo clippy $LOCKED --workspace --all-targets -q -- -D warnings

step "clippy, bare-metal binaries"
cargo clippy $LOCKED -q -p vellum-boot -p vellum-kernel --bins "${BARE[@]}" -- -D warnings

step "host tests"
cargo test $LOCKED -q

if [ $QUICK = 0 ]; then
  step "build target/vellum.bin"
  cargo run $LOCKED -q -p vellum-image -- build

  step "the built image against sev-snp-measure (1/2/4 vCPUs x EPYC models)"
  # Exactly this one test, by its exact name: a rename must fail, not run none.
  out=$(VELLUM_REQUIRE_IMAGE=1 cargo test $LOCKED -q -p vellum-image --test measure_crosscheck -- --exact built_image_matches_if_present 2>&1) || { echo "$out"; exit 1; }
  echo "$out" | grep -E '^test result:'
  echo "$out" | grep -q '^test result: ok. 1 passed;' || {
    echo "test.sh: the sev-snp-measure cross-check of the built image did not run exactly one test (renamed?): fix the name in test.sh." >&2; exit 1; }

  step "guest tests (QEMU/TCG)"
  # Two guests at a time: each TCG guest wants a core, and the host has two.
  # The tap test needs root and /dev/net/tun; under CI it must run, not skip.
  VELLUM_REQUIRE_TAP=$IN_CI VELLUM_PLATFORM=tcg cargo test $LOCKED -q -p vellum-itest -- --test-threads=2

  if [ $SNP = 1 ]; then
    step "the emulated SEV-SNP platform: snp-platform/build.sh (about 3 minutes on a fresh machine, then cached)"
    snp-platform/build.sh

    step "the platform's C unit tests (snp-platform/tests/run.sh)"
    snp-platform/tests/run.sh

    step "guest tests on the emulated SEV-SNP platform (VELLUM_PLATFORM=snp-emulated)"
    VELLUM_REQUIRE_TAP=$IN_CI VELLUM_PLATFORM=snp-emulated cargo test $LOCKED -q -p vellum-itest -- --test-threads=2
  fi

  step "reproducible image (a fresh clone elsewhere builds the same bytes)"
  if ! dirty=$(git status --porcelain --untracked-files=no) || ! git rev-parse -q HEAD >/dev/null; then
    echo "test.sh: git cannot read this checkout (see its message above; for \"dubious ownership\" run git config --global --add safe.directory $PWD), so the reproducibility check cannot run." >&2
    exit 1
  elif [ -z "$dirty" ]; then
    scripts/repro-check.sh --against-worktree
  elif [ $IN_CI = 1 ]; then
    echo "test.sh: the tree has uncommitted changes under CI (the image is not a build of HEAD):" >&2
    echo "$dirty" >&2
    exit 1
  else
    echo "SKIPPED: uncommitted changes (the image is not a build of HEAD); run scripts/repro-check.sh after committing"
  fi
fi
printf '\n== all checks passed in %ss\n' $(( $(date +%s) - t0 ))
