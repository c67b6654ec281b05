#!/usr/bin/env bash
# Side-by-side benchmark: Vellum against the Linux-guest baseline (nginx) under
# the same QEMU, one invocation, using the shared harness
# ../shared/bench/linux-baseline/run.sh. Prints the harness's table and then
# the ratios against the project's targets. Needs root (tap + netns).
#
#   bench/net.sh [--quick] [--net user,tap] [--tests http,https,echo,tlsecho]
#                [--phases size,boot,mem,load] [--reps N] [--duration S]
#                [--linux-default-cpu-only] [--no-linux]
#
# CPU model: Vellum is compiled for AVX/AES-NI, so it runs with -cpu max. The
# Linux guest runs both with QEMU's default CPU (the baseline's own setting,
# where its SSE2 paths are fastest) and with -cpu max; ratios are taken against
# the faster of the two for each figure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
HARNESS=${LB_HARNESS:-$ROOT/../shared/bench/linux-baseline}
NETS=user,tap TESTS=http,https,echo,tlsecho PHASES=size,boot,mem,load REPS=3 DUR=10 LINUX=1 LINUX_MAX=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) REPS=1 DUR=5;;
    --net) NETS=$2; shift;;
    --tests) TESTS=$2; shift;;
    --phases) PHASES=$2; shift;;
    --reps) REPS=$2; shift;;
    --duration) DUR=$2; shift;;
    --no-linux) LINUX=0;;
    --linux-default-cpu-only) LINUX_MAX=0;;
    -h|--help) sed -n '2,15p' "$0"; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
  shift
done
[ -x "$HARNESS/run.sh" ] || { echo "harness not found at $HARNESS" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "bench/net.sh needs root (tap devices in a private netns)" >&2; exit 1; }
. scripts/setup.sh
VELLUM_SETUP_NEED="qemu curl openssl wrk" vellum_setup
cargo run -q -p vellum-image -- build >/dev/null

list=$(mktemp)
common=(--net "$NETS" --tests "$TESTS" --phases "$PHASES" --reps "$REPS" --duration "$DUR")
if [ $LINUX = 1 ]; then
  LB_RUNDIR_FILE=$list "$HARNESS/run.sh" --guest linux-nginx "${common[@]}" >&2
  if [ $LINUX_MAX = 1 ]; then
    LB_RUNDIR_FILE=$list "$HARNESS/run.sh" --guest linux-nginx --cpu max "${common[@]}" >&2
  fi
fi
LB_RUNDIR_FILE=$list "$HARNESS/run.sh" --guest custom --cpu max \
  --custom-args "-bios $ROOT/target/vellum.bin" --https on --tls-echo on "${common[@]}" >&2
python3 "$HARNESS/compare.py" $(cat "$list")
python3 bench/ratios.py $(cat "$list")
rm -f "$list"
