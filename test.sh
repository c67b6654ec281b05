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
t0=$(date +%s)

step "cargo fmt --check"
cargo fmt --all -- --check

step "clippy, host crates"
cargo clippy --workspace --all-targets -q -- -D warnings

step "clippy, bare-metal binaries"
cargo clippy -q -p vellum-boot -p vellum-kernel --bins "${BARE[@]}" -- -D warnings

step "host tests"
cargo test -q

if [ $QUICK = 0 ]; then
  step "build target/vellum.bin"
  cargo run -q -p vellum-image -- build

  step "the built image against sev-snp-measure (1/2/4 vCPUs x EPYC models)"
  VELLUM_REQUIRE_IMAGE=1 cargo test -q -p vellum-image --test measure_crosscheck -- built_image_matches_if_present

  step "guest tests (QEMU/TCG)"
  # Two guests at a time: each TCG guest wants a core, and the host has two.
  VELLUM_PLATFORM=tcg cargo test -q -p vellum-itest -- --test-threads=2

  if [ $SNP = 1 ]; then
    step "the emulated SEV-SNP platform: snp-platform/build.sh (about 3 minutes on a fresh machine, then cached)"
    snp-platform/build.sh

    step "the platform's C unit tests (snp-platform/tests/run.sh)"
    snp-platform/tests/run.sh

    step "guest tests on the emulated SEV-SNP platform (VELLUM_PLATFORM=snp-emulated)"
    VELLUM_PLATFORM=snp-emulated cargo test -q -p vellum-itest -- --test-threads=2
  fi

  step "reproducible image (a fresh clone elsewhere builds the same bytes)"
  if [ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && git rev-parse -q HEAD >/dev/null 2>&1; then
    scripts/repro-check.sh --against-worktree
  else
    echo "skipped: uncommitted changes (the image is not a build of HEAD); run scripts/repro-check.sh after committing"
  fi
fi
printf '\n== all checks passed in %ss\n' $(( $(date +%s) - t0 ))
