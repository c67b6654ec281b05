# shellcheck shell=bash
# Sourced by run-qemu.sh, test.sh, .ci/run and snp-platform/build.sh: makes
# sure this machine has what Vellum needs, installing it when we are root, and
# otherwise saying exactly what to install. Idempotent and quiet when everything is there.
#
#   VELLUM_SETUP_NEED="qemu curl openssl python wrk iproute"   (default: qemu)

vellum_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

vellum_say() { printf 'setup: %s\n' "$*" >&2; }

vellum_apt() {
  # $@: packages. Uses bookworm-backports for QEMU 10 when it is reachable.
  if [ "$(id -u)" != 0 ]; then
    vellum_say "missing: $*"
    vellum_say "install with: sudo apt-get install -y $*   (QEMU >= 7.2; 10.x from bookworm-backports is recommended)"
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [ ! -e /var/lib/apt/lists/.vellum-updated ]; then
    apt-get update -qq >/dev/null && touch /var/lib/apt/lists/.vellum-updated
  fi
  apt-get install -y -qq "$@" >/dev/null
}

vellum_install_qemu() {
  command -v qemu-system-x86_64 >/dev/null && return 0
  vellum_say "installing QEMU"
  if [ "$(id -u)" = 0 ] && grep -qs 'bookworm' /etc/os-release; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/vellum-backports.list
      rm -f /var/lib/apt/lists/.vellum-updated
    fi
    vellum_apt -t bookworm-backports qemu-system-x86 || vellum_apt qemu-system-x86
  else
    vellum_apt qemu-system-x86
  fi
}

vellum_setup() {
  local need="${VELLUM_SETUP_NEED:-qemu}" pkgs=()
  # The pinned toolchain (RUSTUP_AUTO_INSTALL may be off): reads rust-toolchain.toml.
  if ! command -v rustup >/dev/null; then
    vellum_say "rustup not found: install Rust with rustup (https://rustup.rs), then re-run"
    return 1
  fi
  (cd "$vellum_root" && rustup toolchain install >/dev/null 2>&1) || {
    vellum_say "rustup toolchain install failed:"; (cd "$vellum_root" && rustup toolchain install); return 1; }
  # ring, patched for bare metal (see scripts/patch-ring.py); cargo needs it
  # before it can even read the workspace.
  python3 "$vellum_root/scripts/patch-ring.py" "$vellum_root" || return 1
  case " $need " in *" qemu "*) vellum_install_qemu || return 1;; esac
  case " $need " in *" curl "*) command -v curl >/dev/null || pkgs+=(curl);; esac
  case " $need " in *" openssl "*) command -v openssl >/dev/null || pkgs+=(openssl);; esac
  case " $need " in *" python "*) python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv);; esac
  case " $need " in *" wrk "*) command -v wrk >/dev/null || pkgs+=(wrk);; esac
  # `ip` for the guest test on a tap device in a private namespace.
  case " $need " in *" iproute "*) command -v ip >/dev/null || pkgs+=(iproute2);; esac
  if [ ${#pkgs[@]} -gt 0 ]; then vellum_apt "${pkgs[@]}" || return 1; fi
  return 0
}
