#!/usr/bin/env bash
# Fails when Rust code outside the list in docs/ARCHITECTURE.md ("Where
# `unsafe` lives") uses `unsafe`, or when a listed file no longer does (keep
# the list true). Comments and `#![forbid/deny(unsafe_code)]` do not count.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

allowed=$(sed -n '/^<!-- unsafe-allowlist:start -->$/,/^<!-- unsafe-allowlist:end -->$/p' \
            docs/ARCHITECTURE.md | sed -n 's/^- `\([^`]*\)`.*/\1/p' | sort)
if [ -z "$allowed" ]; then
  echo "check-unsafe: docs/ARCHITECTURE.md has no unsafe allowlist between its markers; restore it." >&2
  exit 1
fi
# Files whose code (not comments) says `unsafe`.
found=$(git ls-files '*.rs' ':!:.vendor' ':!:snp-platform' |
          xargs grep -lE '^[^/]*\bunsafe\b' 2>/dev/null |
          while read -r f; do
            if sed -e 's://.*$::' "$f" | grep -vE '#!\[(forbid|deny)\(unsafe_code\)\]' |
                 grep -qE '\bunsafe\b'; then echo "$f"; fi
          done | sort)
bad=0
extra=$(comm -13 <(echo "$allowed") <(echo "$found"))
if [ -n "$extra" ]; then
  echo "check-unsafe: \`unsafe\` in files that docs/ARCHITECTURE.md does not allow:" >&2
  echo "$extra" | sed 's/^/  /' >&2
  echo "Move the unsafe code into one of the listed hardware modules, or (if a new one is truly needed) add the file to the list with a reason." >&2
  bad=1
fi
stale=$(comm -23 <(echo "$allowed") <(echo "$found"))
if [ -n "$stale" ]; then
  echo "check-unsafe: docs/ARCHITECTURE.md allows \`unsafe\` in files that no longer use it; remove them from the list:" >&2
  echo "$stale" | sed 's/^/  /' >&2
  bad=1
fi
[ $bad = 0 ] && echo "check-unsafe: unsafe only in the $(echo "$found" | wc -l) listed files"
exit $bad
