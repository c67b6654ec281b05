#!/usr/bin/env bash
# Reproducibility check: builds the committed tree (HEAD) from two fresh clones
# in different directories, with separate target directories, and requires
# byte-identical target/vellum.bin and the same SNP launch digest.
#
#   scripts/repro-check.sh [--keep]
#   scripts/repro-check.sh --against-worktree
#       one fresh clone only, compared with this checkout's target/vellum.bin
#       (which must be a build of a clean HEAD: what ./test.sh does in CI)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
KEEP=0 WORKTREE=0
case "${1:-}" in --keep) KEEP=1;; --against-worktree) WORKTREE=1;; esac
if [ $WORKTREE = 1 ] && [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "repro-check: the checkout has uncommitted changes; its image is not a build of HEAD" >&2
  exit 2
fi
base=$(mktemp -d /tmp/vellum-repro.XXXXXX)
[ $KEEP = 1 ] || trap 'rm -rf "$base"' EXIT
rev=$(git rev-parse HEAD)
dirs="a/first-clone b/second/clone-with-a-longer-path"
[ $WORKTREE = 1 ] && dirs="b/second/clone-with-a-longer-path"
for d in $dirs; do
  git clone -q "$root" "$base/$d"
  git -C "$base/$d" checkout -q "$rev"
  ( cd "$base/$d"
    python3 scripts/patch-ring.py "$PWD" >/dev/null
    cargo run -q -p vellum-image -- build >/dev/null 2>"$base/build.log" || { cat "$base/build.log" >&2; exit 1; } )
done
A=$base/a/first-clone/target B=$base/b/second/clone-with-a-longer-path/target
[ $WORKTREE = 1 ] && A=$root/target
sa=$(sha256sum < "$A/vellum.bin" | cut -d' ' -f1)
sb=$(sha256sum < "$B/vellum.bin" | cut -d' ' -f1)
echo "clone 1: vellum.bin sha256 $sa, digest $(cat "$A/vellum.measurement")"
echo "clone 2: vellum.bin sha256 $sb, digest $(cat "$B/vellum.measurement")"
if [ "$sa" != "$sb" ] || ! cmp -s "$A/vellum.measurement" "$B/vellum.measurement"; then
  echo "repro-check: FAILED: the two builds of $rev differ" >&2
  cmp -l "$A/vellum.bin" "$B/vellum.bin" | head -5 >&2 || true
  exit 1
fi
echo "repro-check: ok: $rev builds byte-identically in two directories"
