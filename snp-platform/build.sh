#!/usr/bin/env bash
# Builds the emulated SEV-SNP platform: QEMU 10.0.2 (Debian's +ds source
# tarball) with snp-platform/src/*.c copied to target/i386/snp-emu/ and
# snp-platform/patches/*.patch applied. See --help and snp-platform/README.md.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$root/target/snp-platform"

QEMU_VERSION=10.0.2
DEB_VERSION='1:10.0.2+ds-2+deb13u1~bpo12+1'
TARBALL=qemu_10.0.2+ds.orig.tar.xz
TARBALL_SHA256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1
PY_REQS=(meson==1.5.0 pycotap==1.3.1)
CONFIGURE_FLAGS=(--target-list=x86_64-softmmu --disable-docs --disable-tools --disable-user
                 --enable-slirp --disable-download --disable-install-blobs)
# Build dependencies (Debian package names). ipxe-qemu and qemu-system-data
# provide the two ROM files the binary loads at run time (see install_roms).
DEPS=(gcc libc6-dev patch pkg-config ninja-build python3-venv xz-utils libglib2.0-dev
      libpixman-1-dev libfdt-dev libslirp-dev zlib1g-dev libssl-dev ipxe-qemu qemu-system-data)
# ROMs QEMU opens at start for our command line: virtio-net-pci's option ROM
# and the TCG/KVM APIC's kvmvapic.bin. The +ds tarball ships neither.
ROMS=(/usr/lib/ipxe/qemu/efi-virtio.rom /usr/share/qemu/kvmvapic.bin)
SRC_LIST=/etc/apt/sources.list.d/vellum-qemu-src.sources
KEEP=3   # cached builds kept, the current one included

usage() {
  cat <<'USAGE'
snp-platform/build.sh - build the emulated SEV-SNP platform (QEMU 10.0.2 + our patch)

USAGE: snp-platform/build.sh [--path | --expected-path] [--force]

  (no option)       build if out of date; the binary ends up in
                    target/snp-platform/<key>/qemu-system-x86_64, where <key> is
                    the first 16 hex digits of a SHA-256 over build.sh,
                    patches/* and src/*. A second run with nothing changed
                    returns at once. About 3 minutes on 2 cores when fresh.
  --path            build if needed, then print only the binary's path on stdout
  --expected-path   print the path the binary has or will have; never builds
  --force           rebuild from a fresh extraction even if the cache is valid
  -h, --help        this text

Steps of a fresh build (progress on stderr, logs in target/snp-platform/):
  1. build dependencies from apt (installed when root, else the apt-get line
     is printed);
  2. qemu_10.0.2+ds.orig.tar.xz via `apt-get source` from a deb-src entry for
     bookworm-backports on this machine's own Debian mirror (written to
     /etc/apt/sources.list.d/vellum-qemu-src.sources), checked by SHA-256,
     kept in target/snp-platform/download/;
  3. a venv with meson and pycotap from PyPI (target/snp-platform/venv);
  4. extract, copy src/* to target/i386/snp-emu/, apply patches/*.patch in
     lexical order, configure for x86_64-softmmu, ninja qemu-system-x86_64;
  5. install the binary and the ROMs it loads (efi-virtio.rom, kvmvapic.bin,
     from ipxe-qemu and qemu-system-data) into its pc-bios/ directory:
     run QEMU with -L <dir of the binary>/pc-bios (run-qemu.sh does).

Development: VELLUM_SNP_QEMU_TREE=DIR builds incrementally in an existing,
already patched QEMU tree (build directory DIR/build, configured here if it is
not yet): src/* files that differ are copied to DIR/target/i386/snp-emu/, no
fetch, no extraction, no patches; --path prints DIR/build/qemu-system-x86_64.
USAGE
}

say() { printf 'snp-platform: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

MODE=build FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --path) MODE=path;;
    --expected-path) MODE=expected;;
    --force) FORCE=1;;
    -h|--help) usage; exit 0;;
    *) die "unknown option $1: see snp-platform/build.sh --help.";;
  esac
  shift
done

t_start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t_start ))s"; }

# --- cache key --------------------------------------------------------------

cache_key() {
  # Path and content of build.sh, patches/* and src/*, in byte order of path.
  (cd "$here" && { echo build.sh; find patches src -maxdepth 1 -type f 2>/dev/null; } \
     | LC_ALL=C sort | while IFS= read -r f; do sha256sum "$f"; done) | sha256sum | cut -c1-16
}

# --- dependencies ------------------------------------------------------------

install_deps() {
  command -v dpkg-query >/dev/null || { say "not a Debian system: make sure the equivalents of ${DEPS[*]} are installed"; return 0; }
  local missing=() p
  for p in "${DEPS[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    die "missing build dependencies; install them with: sudo apt-get install -y ${missing[*]}   then re-run snp-platform/build.sh."
  fi
  say "installing build dependencies: ${missing[*]}"
  # shellcheck source=scripts/setup.sh
  . "$root/scripts/setup.sh"
  vellum_apt "${missing[@]}" || die "apt-get install ${missing[*]} failed; run it by hand to see why, then re-run snp-platform/build.sh."
}

# --- the source tarball --------------------------------------------------------

# Prints "URI SIGNED-BY" of this machine's apt entry for Debian bookworm (the
# signed-by part may be empty), from deb822 or one-line sources.
bookworm_mirror() {
  local f res
  res=$(for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
    if [ ! -f "$f" ] || [ "$f" = "$SRC_LIST" ]; then continue; fi
    awk 'BEGIN { RS = "" }
      {
        uri = ""; sb = ""; suites = ""; types = ""; enabled = "yes"
        n = split($0, line, "\n")
        for (i = 1; i <= n; i++) {
          l = line[i]
          if (l ~ /^#/) continue
          k = l; sub(/:.*/, "", k); v = l; sub(/^[^:]*:[ \t]*/, "", v)
          k = tolower(k)
          if (k == "uris") { split(v, u, /[ \t]+/); uri = u[1] }
          else if (k == "suites") suites = " " v " "
          else if (k == "types") types = " " v " "
          else if (k == "signed-by") sb = v
          else if (k == "enabled") enabled = tolower(v)
        }
        if (enabled != "no" && types ~ /[ \t]deb(-src)?[ \t]/ && suites ~ /[ \t]bookworm[ \t]/ && uri != "") {
          if (sb !~ /^\//) sb = ""
          print uri, sb; exit
        }
      }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" || $1 == "deb-src" {
        i = 2; sb = ""
        if ($2 ~ /^\[/) {
          for (; i <= NF; i++) {
            o = $i; gsub(/[][]/, "", o)
            if (o ~ /^signed-by=/) { sub(/^signed-by=/, "", o); sb = o }
            if ($i ~ /\]$/) { i++; break }
          }
        }
        if ($(i + 1) == "bookworm") { print $i, sb; exit }
      }' "$f"
  done)
  res=${res%%$'\n'*}
  [ -n "$res" ] && echo "$res"
}

tarball_ok() { [ -f "$1" ] && echo "$TARBALL_SHA256  $1" | sha256sum -c --status; }

fetch_tarball() {
  local dl="$out/download" tb
  tb="$dl/$TARBALL"
  mkdir -p "$dl"
  if [ -f "$tb" ]; then
    tarball_ok "$tb" && return 0
    mv -f "$tb" "$tb.rejected"
    say "$tb did not have the expected SHA-256; moved it to $TARBALL.rejected and fetching it again."
  fi
  if [ "$(id -u)" != 0 ]; then
    die "the QEMU source is not here yet and fetching it needs root (an apt source entry). Run snp-platform/build.sh once as root, or put $TARBALL (SHA-256 $TARBALL_SHA256, from Debian's qemu source package $DEB_VERSION) in $dl/ and re-run."
  fi
  local mirror uri sb
  mirror=$(bookworm_mirror) || die "found no apt source entry for Debian bookworm in /etc/apt/sources.list or /etc/apt/sources.list.d/ to derive the deb-src mirror from. Add one, or put $TARBALL (SHA-256 $TARBALL_SHA256) in $dl/ and re-run."
  read -r uri sb <<<"$mirror"
  [ -z "$sb" ] && [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] && sb=/usr/share/keyrings/debian-archive-keyring.gpg
  {
    echo "# Written by Vellum's snp-platform/build.sh: Debian's QEMU source package,"
    echo "# from this machine's bookworm mirror. Safe to delete once the build is done."
    echo "Types: deb-src"
    echo "URIs: $uri"
    echo "Suites: bookworm-backports"
    echo "Components: main"
    [ -n "$sb" ] && echo "Signed-By: $sb"
  } > "$SRC_LIST"
  say "deb-src bookworm-backports from $uri written to $SRC_LIST; apt-get update (that entry only)"
  local log="$dl/apt.log"
  : > "$log"
  apt-get update -o Dir::Etc::sourcelist="$SRC_LIST" -o Dir::Etc::sourceparts=- \
      -o APT::Get::List-Cleanup=0 >>"$log" 2>&1 \
    || say "apt-get update reported errors (see $log); trying apt-get source anyway"
  say "apt-get source --download-only qemu=$DEB_VERSION (only $TARBALL is used; 404s for the other files are expected)"
  # apt-get exits non-zero here (the .dsc and the debian tarball may be
  # missing from the mirror): only the orig tarball matters, so check it.
  (cd "$dl" && apt-get source --download-only "qemu=$DEB_VERSION") >>"$log" 2>&1 || true
  [ -f "$tb" ] || { tail -n 15 "$log" >&2; die "apt-get source did not fetch $TARBALL (log: $log). Check that the mirror above serves bookworm-backports sources, or put the file (SHA-256 $TARBALL_SHA256) in $dl/ and re-run."; }
  if ! tarball_ok "$tb"; then
    mv -f "$tb" "$tb.rejected"
    die "the downloaded $TARBALL does not have SHA-256 $TARBALL_SHA256 (kept as $tb.rejected); refusing to build from it. Check the mirror, then re-run."
  fi
  say "$TARBALL fetched and verified"
}

# --- python venv with meson ------------------------------------------------------

make_venv() {
  local venv="$out/venv" want="${PY_REQS[*]}"
  if [ -x "$venv/bin/python3" ] && [ "$(cat "$venv/.vellum-reqs" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  say "python venv with $want (target/snp-platform/venv)"
  python3 -m venv --clear "$venv" >"$out/venv.log" 2>&1 \
    || { cat "$out/venv.log" >&2; die "python3 -m venv failed; install python3-venv (apt-get install python3-venv) and re-run."; }
  "$venv/bin/python3" -m pip install -q "${PY_REQS[@]}" >>"$out/venv.log" 2>&1 \
    || { tail -n 20 "$out/venv.log" >&2; die "pip could not install $want from PyPI (log: $out/venv.log); check network access to PyPI and re-run."; }
  echo "$want" > "$venv/.vellum-reqs"
}

# --- configure and ninja ---------------------------------------------------------

configure_tree() { # $1: QEMU tree, $2: log
  say "configure (log: $2)"
  mkdir -p "$1/build"
  (cd "$1/build" && ../configure --python="$out/venv/bin/python3" "${CONFIGURE_FLAGS[@]}") >>"$2" 2>&1 \
    || { tail -n 30 "$2" >&2; die "QEMU's configure failed (log: $2): a missing build dependency is the usual cause."; }
}

ninja_pid=""
# shellcheck disable=SC2317  # called from the traps
kill_ninja() { [ -n "$ninja_pid" ] && kill "$ninja_pid" 2>/dev/null; true; }
trap kill_ninja EXIT
trap 'kill_ninja; exit 130' INT TERM

run_ninja() { # $1: build dir, $2: log
  say "ninja qemu-system-x86_64 (log: $2)"
  ninja -C "$1" qemu-system-x86_64 >>"$2" 2>&1 &
  ninja_pid=$!
  local n=0 p
  while kill -0 "$ninja_pid" 2>/dev/null; do
    sleep 1
    n=$((n + 1))
    if [ $((n % 20)) = 0 ]; then
      p=$(grep -o '^\[[0-9]*/[0-9]*\]' "$2" | tail -n1 || true)
      say "building ${p:-(starting)} after $(elapsed)"
    fi
  done
  if ! wait "$ninja_pid"; then
    ninja_pid=""
    echo "--- last lines of $2:" >&2
    tail -n 40 "$2" >&2
    return 1
  fi
  ninja_pid=""
}

install_roms() { # $1: directory
  mkdir -p "$1"
  local r
  for r in "${ROMS[@]}"; do
    [ -f "$r" ] || die "$r is missing: install ipxe-qemu and qemu-system-data (apt-get install ipxe-qemu qemu-system-data) and re-run."
    cmp -s "$r" "$1/$(basename "$r")" || cp "$r" "$1/"
  done
}

# --- development mode: an existing tree ---------------------------------------------

tree_build() {
  local tree="$VELLUM_SNP_QEMU_TREE"
  tree="$(cd "$tree" 2>/dev/null && pwd)" || die "VELLUM_SNP_QEMU_TREE=$VELLUM_SNP_QEMU_TREE is not a directory."
  if [ ! -f "$tree/configure" ] || [ ! -d "$tree/target/i386" ]; then
    die "VELLUM_SNP_QEMU_TREE=$tree does not look like a QEMU source tree (no configure or target/i386/)."
  fi
  local bin="$tree/build/qemu-system-x86_64" log="$tree/build/vellum-build.log"
  if [ "$MODE" = expected ]; then echo "$bin"; return 0; fi
  mkdir -p "$tree/build" "$tree/target/i386/snp-emu"
  exec 9>"$tree/build/.vellum-build.lock"
  flock 9
  local f changed=0
  for f in "$here"/src/*; do
    [ -f "$f" ] || continue
    if ! cmp -s "$f" "$tree/target/i386/snp-emu/$(basename "$f")"; then
      cp "$f" "$tree/target/i386/snp-emu/"
      changed=$((changed + 1))
    fi
  done
  [ $changed -gt 0 ] && say "copied $changed changed file(s) from snp-platform/src to $tree/target/i386/snp-emu/"
  : > "$log"
  if [ ! -f "$tree/build/build.ninja" ]; then
    install_deps
    make_venv
    configure_tree "$tree" "$log"
  fi
  run_ninja "$tree/build" "$log" || die "the build in $tree failed (log: $log); fix the error above and re-run."
  install_roms "$tree/build/pc-bios"
  [ "$MODE" = path ] && echo "$bin"
  return 0
}

# --- main ------------------------------------------------------------------------

# All of the work is in main, which bash reads whole before running it: a
# build.sh edited (or checked out anew) during a long build cannot derail it.
main() {
  if [ -n "${VELLUM_SNP_QEMU_TREE:-}" ]; then
    tree_build
    exit 0
  fi

  key=$(cache_key)
  dir="$out/$key"
  bin="$dir/qemu-system-x86_64"
  done_stamp="$dir/.complete"

  if [ "$MODE" = expected ]; then echo "$bin"; exit 0; fi
  if [ $FORCE = 0 ] && [ -f "$done_stamp" ] && [ -x "$bin" ]; then
    if [ "$MODE" = path ]; then echo "$bin"; else say "up to date: $bin"; fi
    exit 0
  fi

  mkdir -p "$out"
  # One build at a time (the harness may ask from several processes at once).
  exec 9>"$out/.lock"
  if ! flock -n 9; then
    say "another snp-platform/build.sh is running; waiting for it"
    flock 9
    if [ $FORCE = 0 ] && [ -f "$done_stamp" ] && [ -x "$bin" ]; then
      [ "$MODE" = path ] && echo "$bin"
      exit 0
    fi
  fi

  say "building QEMU $QEMU_VERSION with the emulated SEV-SNP platform into target/snp-platform/$key (about 3 minutes on 2 cores)"
  install_deps
  fetch_tarball
  make_venv

  rm -rf "$dir"
  mkdir -p "$dir"
  log="$dir/build.log"
  : > "$log"
  say "extracting $TARBALL"
  tar -xJf "$out/download/$TARBALL" -C "$dir" --no-same-owner
  tree="$dir/qemu-$QEMU_VERSION"
  [ -f "$tree/meson.build" ] || die "$TARBALL did not contain qemu-$QEMU_VERSION/meson.build; delete $out/download/$TARBALL and re-run."

  # The +ds tarball has no edk2 blobs: do not try to unpack them.
  edk2_line='    unpack_edk2_blobs = bzip2.found()'
  grep -qxF "$edk2_line" "$tree/meson.build" || die "meson.build no longer has the line '$edk2_line'; update snp-platform/build.sh for this QEMU version."
  sed -i 's/^    unpack_edk2_blobs = bzip2\.found()$/    unpack_edk2_blobs = false/' "$tree/meson.build"
  if grep -qxF "$edk2_line" "$tree/meson.build"; then
    die "could not force unpack_edk2_blobs = false in meson.build; update snp-platform/build.sh."
  fi

  mkdir -p "$tree/target/i386/snp-emu"
  nsrc=0
  for f in "$here"/src/*; do
    [ -f "$f" ] || continue
    cp "$f" "$tree/target/i386/snp-emu/"
    nsrc=$((nsrc + 1))
  done
  say "copied $nsrc file(s) from snp-platform/src to target/i386/snp-emu/"

  npatch=0
  while IFS= read -r p; do
    say "applying patches/$(basename "$p")"
    if ! (cd "$tree" && patch -p1 --forward --batch <"$p") >>"$log" 2>&1; then
      tail -n 20 "$log" >&2
      die "patches/$(basename "$p") does not apply to QEMU $QEMU_VERSION (log: $log; tree kept in $tree). Refresh the patch, then re-run."
    fi
    npatch=$((npatch + 1))
  done < <(find "$here/patches" -maxdepth 1 -type f -name '*.patch' 2>/dev/null | LC_ALL=C sort)
  [ $npatch = 0 ] && say "no patches in snp-platform/patches: building plain QEMU $QEMU_VERSION"

  configure_tree "$tree" "$log"
  run_ninja "$tree/build" "$log" || die "the QEMU build failed (log: $log; tree kept in $tree). Fix the error above and re-run."

  cp "$tree/build/qemu-system-x86_64" "$bin.tmp"
  mv -f "$bin.tmp" "$bin"
  install_roms "$dir/pc-bios"
  "$bin" --version >/dev/null || die "the built $bin does not run; see $log."
  # The tree is only needed to build; the binary and its ROMs are all that runs.
  rm -rf "$tree"
  touch "$done_stamp"

  # Keep the newest $KEEP builds (this one included).
  n=0
  while IFS= read -r d; do
    [ "$d" = "$dir" ] && continue
    n=$((n + 1))
    if [ $n -ge "$KEEP" ]; then rm -rf "$d"; say "removed the old build $(basename "$d")"; fi
  done < <(find "$out" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended \
             -regex '.*/[0-9a-f]{16}' -printf '%T@ %p\n' | sort -rn | cut -d' ' -f2-)

  say "built $bin in $(elapsed)"
  if [ "$(cache_key)" != "$key" ]; then
    say "note: snp-platform/ changed while this build ran (it used the files as they were when copied); the next run builds again."
  fi
  [ "$MODE" = path ] && echo "$bin"
  exit 0
}

main   # never returns: every path ends in exit
