#!/usr/bin/env bash
# Before and after, side by side: the image built from a git revision (A)
# against the image of the working tree (B), same load, same QEMU, back to
# back, alternating which goes first. Prints per-figure medians (min-max) and
# the ratio B / A. For checking that a change costs no speed.
#
#   bench/ab.sh --base REV [--rounds N] [--duration S] [--tests echo,tlsecho,http,https]
#               [--net tap|user]
#
# A is built in a temporary git worktree of REV (deleted afterwards). Uses the
# shared harness (../shared/bench/linux-baseline/run.sh, --guest custom, -cpu
# max). Needs root for --net tap (tap devices in a private netns). The host is
# noisy (2 cores, TCG): use several rounds and read the ratio of medians.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
HARNESS=${LB_HARNESS:-$ROOT/../shared/bench/linux-baseline}
BASE="" ROUNDS=3 DUR=10 TESTS=echo,tlsecho,http,https NET=tap
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE=${2:?--base needs a git revision, e.g. --base HEAD~1}; shift;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift;;
    --duration) DUR=${2:?--duration needs seconds}; shift;;
    --tests) TESTS=${2:?--tests needs a list such as echo,tlsecho}; shift;;
    --net) NET=${2:?--net needs tap or user}; shift;;
    -h|--help) sed -n '2,14p' "$0"; exit 0;;
    *) echo "bench/ab.sh: unknown option $1; see bench/ab.sh --help" >&2; exit 2;;
  esac
  shift
done
[ -n "$BASE" ] || { echo "bench/ab.sh: say which revision to compare against, e.g. --base HEAD~1" >&2; exit 2; }
git rev-parse --verify -q "$BASE^{commit}" >/dev/null ||
  { echo "bench/ab.sh: $BASE is not a git revision here; give a commit, tag or branch" >&2; exit 2; }
[ -x "$HARNESS/run.sh" ] || { echo "bench/ab.sh: harness not found at $HARNESS; set LB_HARNESS to its folder" >&2; exit 1; }
if [ "$NET" = tap ] && [ "$(id -u)" != 0 ]; then
  echo "bench/ab.sh: --net tap needs root (tap devices in a private netns); run as root or use --net user" >&2; exit 1
fi
. scripts/setup.sh
VELLUM_SETUP_NEED="qemu curl wrk" vellum_setup

A=$ROOT/target/vellum-ab-base.bin B=$ROOT/target/vellum-ab-new.bin
WT=$(mktemp -d)
list_a=$(mktemp) list_b=$(mktemp)
trap 'git worktree remove --force "$WT" >/dev/null 2>&1 || true; rm -rf "$WT" "$list_a" "$list_b"' EXIT
echo "bench/ab.sh: building A ($BASE) in a temporary worktree" >&2
git worktree add -q --detach "$WT" "$BASE"
ln -s "$ROOT/.vendor" "$WT/.vendor"   # patched ring, made by scripts/setup.sh
(cd "$WT" && CARGO_TARGET_DIR=$ROOT/target/ab-base cargo run -q -p vellum-image -- build --out "$A" >/dev/null)
echo "bench/ab.sh: building B (the working tree)" >&2
cargo run -q -p vellum-image -- build --out "$B" >/dev/null

run() { # $1 image, $2 rundir list
  LB_RUNDIR_FILE=$2 "$HARNESS/run.sh" --guest custom --cpu max --custom-args "-bios $1" \
    --net "$NET" --tests "$TESTS" --phases load --reps 1 \
    --duration "$DUR" >/dev/null 2>&1 || echo "harness run for $1 failed" >&2
}
for r in $(seq "$ROUNDS"); do
  echo "bench/ab.sh: round $r/$ROUNDS" >&2
  if [ $((r % 2)) = 1 ]; then run "$A" "$list_a"; run "$B" "$list_b"
  else run "$B" "$list_b"; run "$A" "$list_a"; fi
done

python3 - "$ROOT/bench" "$list_a" "$list_b" "$NET" "$BASE" <<'PY'
import statistics, sys
sys.path.insert(0, sys.argv.pop(1))
from results import fmt, load
a, b, net, base = load(sys.argv[1]), load(sys.argv[2]), sys.argv[3], sys.argv[4]
print(f"### Before ({base}) and after (working tree), net={net}, median (min-max) of the rounds\n")
print("| figure | before | after | after / before |")
print("|---|---:|---:|---:|")
for key in sorted(set(a) & set(b)):
    ma, mb = statistics.median(a[key]), statistics.median(b[key])
    print(f"| {key[0]} {key[1]} | {fmt(a[key])} | {fmt(b[key])} | {mb / ma if ma else float('nan'):.3f} |")
if not set(a) & set(b):
    print("no figure was measured for both images; see the harness run directories:")
print("\nrun directories:", *open(sys.argv[1]).read().split(), *open(sys.argv[2]).read().split())
PY
