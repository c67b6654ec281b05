#!/usr/bin/env bash
# What the shared-pool constraints cost: Vellum as shipped against a build with
# them lifted (the "optimal trusted I/O" of the paper), same load, same QEMU,
# back to back. Target: constrained >= 0.97 x unconstrained.
#
#   bench/trusted-io.sh [--rounds N] [--duration S] [--tests echo,http] [--net tap]
#                       [--no-build]
#
# Builds three images:
#   target/vellum.bin                constrained (the default build, rebuilt last
#                                    so the default image is never the other one)
#   target/vellum-no-lro.bin         constrained without large receive
#                                    (`vellum-kernel/no-large-receive`): what the
#                                    ratio compares, since the unconstrained
#                                    build cannot parse merged receive buffers
#                                    in place and so goes without them
#   target/vellum-unconstrained.bin  `image build --features
#                                    vellum-kernel/unconstrained-io`: RX frames
#                                    parsed in place in the shared pool (no copy
#                                    out), device-written ring fields and headers
#                                    not validated. MEASUREMENT ONLY; it says so
#                                    on its console at boot.
# then runs the shared harness (../shared/bench/linux-baseline/run.sh, --guest
# custom, -cpu max) once per image per round, rotating which goes first,
# and prints per-figure medians (min-max) and the ratio constrained /
# unconstrained at equal offloads (no large receive), with the shipped build
# for reference. Needs root (tap in a private netns). The host is noisy (2
# cores, TCG): use several rounds; the ratio of medians is what to read.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
HARNESS=${LB_HARNESS:-$ROOT/../shared/bench/linux-baseline}
ROUNDS=3 DUR=5 TESTS=echo,http NET=tap BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift;;
    --duration) DUR=$2; shift;;
    --tests) TESTS=$2; shift;;
    --net) NET=$2; shift;;
    --no-build) BUILD=0;;
    -h|--help) sed -n '2,24p' "$0"; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
  shift
done
[ -x "$HARNESS/run.sh" ] || { echo "harness not found at $HARNESS" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "bench/trusted-io.sh needs root (tap devices in a private netns)" >&2; exit 1; }
. scripts/setup.sh
VELLUM_SETUP_NEED="qemu curl wrk" vellum_setup

S=$ROOT/target/vellum.bin
C=$ROOT/target/vellum-no-lro.bin
U=$ROOT/target/vellum-unconstrained.bin
if [ $BUILD = 1 ]; then
  cargo run -q -p vellum-image -- build --features vellum-kernel/unconstrained-io --out "$U" >/dev/null
  cargo run -q -p vellum-image -- build --features vellum-kernel/no-large-receive --out "$C" >/dev/null
  cargo run -q -p vellum-image -- build >/dev/null   # the default image: constrained
fi
[ -f "$S" ] && [ -f "$C" ] && [ -f "$U" ] || { echo "images missing (run without --no-build)" >&2; exit 1; }

# Each image must be what it claims (the unconstrained one announces itself).
check() { # $1 image, $2 expect unconstrained (1/0)
  local log; log=$(timeout 4 qemu-system-x86_64 -accel tcg -m 64M -nographic -no-reboot -cpu max \
    -device virtio-net-pci,netdev=n0 -netdev user,id=n0,restrict=on -bios "$1" </dev/null 2>&1 || true)
  if grep -q "UNCONSTRAINED I/O BUILD" <<<"$log"; then [ "$2" = 1 ]; else [ "$2" = 0 ]; fi
}
check "$S" 0 || { echo "$S is not the constrained build" >&2; exit 1; }
check "$C" 0 || { echo "$C is not the constrained build" >&2; exit 1; }
check "$U" 1 || { echo "$U does not announce itself as unconstrained" >&2; exit 1; }

list_s=$(mktemp) list_c=$(mktemp) list_u=$(mktemp)
trap 'rm -f "$list_s" "$list_c" "$list_u"' EXIT
run() { # $1 image, $2 rundir list
  LB_RUNDIR_FILE=$2 "$HARNESS/run.sh" --guest custom --cpu max --custom-args "-bios $1" \
    --https off --tls-echo off --net "$NET" --tests "$TESTS" --phases load --reps 1 \
    --duration "$DUR" >/dev/null 2>&1 || echo "harness run for $1 failed" >&2
}
for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  case $((r % 3)) in
    1) run "$C" "$list_c"; run "$U" "$list_u"; run "$S" "$list_s";;
    2) run "$U" "$list_u"; run "$S" "$list_s"; run "$C" "$list_c";;
    0) run "$S" "$list_s"; run "$C" "$list_c"; run "$U" "$list_u";;
  esac
done

python3 - "$ROOT/bench" "$list_c" "$list_u" "$NET" "$list_s" <<'EOF'
import statistics, sys
sys.path.insert(0, sys.argv.pop(1))
from results import fmt, load
c, u, net, s = load(sys.argv[1]), load(sys.argv[2]), sys.argv[3], load(sys.argv[4])
print(f"### Constrained vs unconstrained I/O (net={net}, median (min-max) of the rounds)\n")
print("Ratio at equal offloads: constrained without large receive / unconstrained")
print("(which has none). The shipped build (with large receive) for reference.\n")
print("| figure | constrained | unconstrained | ratio | target | met | shipped build |")
print("|---|---:|---:|---:|---:|---|---:|")
for key in sorted(set(c) & set(u)):
    mc, mu = statistics.median(c[key]), statistics.median(u[key])
    r = mc / mu if mu else float("nan")
    ms = fmt(s[key]) if key in s else "-"
    print(f"| {key[0]} {key[1]} | {fmt(c[key])} | {fmt(u[key])} | {r:.3f} | >= 0.97 | {'yes' if r >= 0.97 else 'NO'} | {ms} |")
print("\nrun directories:", *open(sys.argv[1]).read().split(), *open(sys.argv[2]).read().split(), *open(sys.argv[4]).read().split())
EOF
