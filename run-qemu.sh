#!/usr/bin/env bash
# Builds what is out of date and boots Vellum under QEMU. See --help.
# shellcheck disable=SC2054  # commas inside QEMU arguments are QEMU's syntax
set -euo pipefail
# The caller's directory: --snp-certs DIR is relative to it (QEMU runs from here).
CALLER_PWD=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")"

usage() {
  cat <<'USAGE'
run-qemu.sh - build the Vellum image and boot it under QEMU

USAGE: ./run-qemu.sh [options] [-- extra QEMU args]

  --kvm                use KVM (-enable-kvm -cpu host) instead of TCG; optional
  --snp                launch as an SEV-SNP guest (needs an SNP-enabled AMD host,
                       KVM with SNP support and QEMU >= 9.1)
  --snp-emulated       launch as an SEV-SNP guest on the emulated platform: our
                       QEMU 10.0.2 build (snp-platform/build.sh, built here on
                       first use, about 3 minutes) with the --snp command line,
                       but -accel tcg and emulated=on. No SNP hardware needed.
  --snp-certs DIR      emulated: the platform writes its ark.pem, ask.pem and
                       vcek.pem to DIR (created if missing)
  --snp-fault NAME     emulated: the platform misbehaves on purpose: cpuid-lie,
                       ioio-error, psc-noop, page-shared, spurious-vc,
                       guest-req-replay, guest-req-alter, report-data,
                       busy-forever (NAME@N: after N truthful events of that
                       kind; see snp-platform/README.md)
  --mem SIZE           guest RAM (default 32M)
  --timeout N          stop QEMU after N seconds (exit status 124)
  --print-cmd          print the QEMU command line and exit
  --no-build           boot target/vellum.bin as it is
  --image PATH         boot another image (implies --no-build)
  --http-port P        host 127.0.0.1:P -> guest :80    (default 8080)
  --echo-port P        host 127.0.0.1:P -> guest :7     (default 8007)
  --https-port P       host 127.0.0.1:P -> guest :443   (default 8443)
  --tls-echo-port P    host 127.0.0.1:P -> guest :7443  (default 7443)
  --no-net             no network device
  --tap IFNAME         virtio-net on an existing tap device instead of user
                       networking (no port forwards: reach the guest at its
                       address, 10.0.2.15 without DHCP). QEMU offers checksum
                       offload and TSO there. Needs access to /dev/net/tun.
  --cpu MODEL          QEMU -cpu model (default: max under TCG, host under KVM,
                       EPYC-v4 under SNP, emulated or not)
  --cbitpos N          SNP C-bit position (default 51)
  --policy HEX         SNP guest policy (default 0x30000: SMT allowed, debug off)
  --id-key PEM         SNP: sign an ID block for this image's measurement with
                       the P-384 key PEM (`image id-block`), so the AMD-SP refuses
                       the launch if the measurement differs
  --author-key PEM     SNP: also sign the ID key with this author key
  --id-block-args S    SNP: extra sev-snp-guest properties, verbatim
  -h, --help           this text

Environment: VELLUM_SNP_QEMU=PATH makes --snp-emulated use that QEMU binary
as it is (the guest tests pin the one they built); VELLUM_SNP_QEMU_TREE=DIR
builds it in an existing patched QEMU tree (see snp-platform/build.sh --help).

The serial console is on stdout. The guest exits QEMU through isa-debug-exit:
status 33 for a clean test exit, 35 after a kernel panic. Under SEV-SNP
(--snp, --snp-emulated) there is no isa-debug-exit device; the emulated
platform exits with
  86  the guest asked to terminate (GHCB termination request); stderr has
      "snp-emu: guest terminated: reason set S, code C (...)"
  87  a fatal platform error the guest caused (RMP violation and the like);
      stderr has "snp-emu: RMP violation: ..." or a similar line
USAGE
}

MEM=32M TIMEOUT="" PRINT=0 BUILD=1 IMAGE=target/vellum.bin KVM=0 SNP=0 NET=1 CPU="" TAP=""
HTTP=8080 ECHO=8007 HTTPS=8443 TLSECHO=7443 CBITPOS=51 POLICY=0x30000 IDARGS="" IDKEY="" AUTHORKEY=""
EMU=0 CERTS="" FAULT=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --mem|--timeout|--image|--http-port|--echo-port|--https-port|--tls-echo-port|--tap|--cpu|\
    --cbitpos|--policy|--id-key|--author-key|--id-block-args|--snp-certs|--snp-fault)
      if [ $# -lt 2 ] || [ -z "$2" ]; then
        echo "run-qemu.sh: $1 needs a value (see --help)." >&2
        exit 2
      fi;;
  esac
  case "$1" in
    --kvm) KVM=1;;
    --snp) SNP=1;;
    --snp-emulated) SNP=1 EMU=1;;
    --snp-certs) CERTS=$2; shift;;
    --snp-fault) FAULT=$2; shift;;
    --mem) MEM=$2; shift;;
    --timeout) TIMEOUT=$2; shift;;
    --print-cmd) PRINT=1;;
    --no-build) BUILD=0;;
    --image) IMAGE=$2; BUILD=0; shift;;
    --http-port) HTTP=$2; shift;;
    --echo-port) ECHO=$2; shift;;
    --https-port) HTTPS=$2; shift;;
    --tls-echo-port) TLSECHO=$2; shift;;
    --no-net) NET=0;;
    --tap) TAP=$2; shift;;
    --cpu) CPU=$2; shift;;
    --cbitpos) CBITPOS=$2; shift;;
    --policy) POLICY=$2; shift;;
    --id-key) IDKEY=$2; shift;;
    --author-key) AUTHORKEY=$2; shift;;
    --id-block-args) IDARGS=$2; shift;;
    -h|--help) usage; exit 0;;
    --) shift; EXTRA=("$@"); break;;
    *) echo "run-qemu.sh: unknown option $1 (see --help)." >&2; exit 2;;
  esac
  shift
done
if [ $EMU = 0 ] && { [ -n "$CERTS" ] || [ -n "$FAULT" ]; }; then
  echo "run-qemu.sh: --snp-certs and --snp-fault only apply to the emulated platform: add --snp-emulated." >&2
  exit 2
fi
if [ $EMU = 1 ] && [ $KVM = 1 ]; then
  echo "run-qemu.sh: --snp-emulated runs under TCG; drop --kvm (or use --snp on an SNP host)." >&2
  exit 2
fi

if [ $SNP = 1 ] && [ -n "$IDKEY" ]; then
  # The ID block commits to this image's launch digest for exactly this launch:
  # 1 vCPU (-smp 1), the -cpu model below, QEMU 10's guest features 0x1.
  [ $BUILD = 1 ] && [ $PRINT = 0 ] && cargo run -q -p vellum-image -- build >&2
  idcmd=(cargo run -q -p vellum-image -- id-block --image "$IMAGE" --id-key "$IDKEY"
         --vcpus 1 --vcpu-type "${CPU:-EPYC-v4}" --policy "$POLICY")
  [ -n "$AUTHORKEY" ] && idcmd+=(--author-key "$AUTHORKEY")
  props=$("${idcmd[@]}") || { echo "run-qemu.sh: image id-block failed" >&2; exit 1; }
  IDARGS="${props}${IDARGS:+,$IDARGS}"
fi

QEMU=qemu-system-x86_64
if [ $EMU = 1 ]; then
  # Our QEMU build; --print-cmd shows where it is or will be, without building.
  if [ -n "${VELLUM_SNP_QEMU:-}" ]; then
    QEMU=$VELLUM_SNP_QEMU
  elif [ $PRINT = 1 ]; then
    QEMU=$(snp-platform/build.sh --expected-path)
  else
    QEMU=$(snp-platform/build.sh --path) || {
      echo "run-qemu.sh --snp-emulated: building the emulated SEV-SNP platform failed (snp-platform/build.sh says why above)." >&2
      exit 1
    }
  fi
fi
cmd=("$QEMU" -machine q35 -smp 1 -m "$MEM" -nodefaults -no-reboot
     -display none -serial stdio -bios "$IMAGE")
if [ $SNP = 1 ]; then
  cmd[2]="q35,confidential-guest-support=sev0,vmport=off"
  snpobj="sev-snp-guest,id=sev0,cbitpos=$CBITPOS,reduced-phys-bits=1,policy=$POLICY"
  if [ $EMU = 1 ]; then
    # Its own ROMs (efi-virtio.rom, kvmvapic.bin): the +ds source has none.
    cmd+=(-L "$(dirname "$QEMU")/pc-bios" -accel tcg)
    snpobj+=",emulated=on"
    if [ -n "$CERTS" ]; then
      case "$CERTS" in /*) ;; *) CERTS="$CALLER_PWD/$CERTS";; esac
      [ $PRINT = 1 ] || mkdir -p "$CERTS"
      snpobj+=",certs=${CERTS//,/,,}"   # a comma in a QEMU option value is doubled
    fi
    [ -n "$FAULT" ] && snpobj+=",fault=$FAULT"
  else
    cmd+=(-enable-kvm)
  fi
  cmd+=(-cpu "${CPU:-EPYC-v4}" -object "$snpobj${IDARGS:+,$IDARGS}")
elif [ $KVM = 1 ]; then
  cmd+=(-enable-kvm -cpu "${CPU:-host}" -device isa-debug-exit,iobase=0xf4,iosize=0x04)
else
  cmd+=(-accel tcg -cpu "${CPU:-max}" -device isa-debug-exit,iobase=0xf4,iosize=0x04)
fi
# Legacy virtio-net over I/O ports (Vellum's driver). With a confidential
# guest QEMU defaults virtio-pci devices to disable-legacy=on and
# iommu_platform=on (modern only, "device cannot work as neither modern nor
# legacy mode is enabled"): under SNP say legacy explicitly. The device only
# ever reaches the shared pool, which the guest maps without the C-bit.
vnet=virtio-net-pci,netdev=n0,disable-modern=on
[ $SNP = 1 ] && vnet+=",disable-legacy=off,iommu_platform=off"
if [ $NET = 1 ] && [ -n "$TAP" ]; then
  cmd+=(-netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" -device "$vnet")
elif [ $NET = 1 ]; then
  fwd="hostfwd=tcp:127.0.0.1:$HTTP-:80,hostfwd=tcp:127.0.0.1:$ECHO-:7"
  fwd+=",hostfwd=tcp:127.0.0.1:$HTTPS-:443,hostfwd=tcp:127.0.0.1:$TLSECHO-:7443"
  cmd+=(-netdev "user,id=n0,restrict=on,$fwd" -device "$vnet")
fi
cmd+=("${EXTRA[@]}")

if [ $PRINT = 1 ]; then
  out=""
  for a in "${cmd[@]}"; do
    if [[ "$a" =~ ^[A-Za-z0-9_,.:=/+@%-]+$ ]]; then out+="$a "; else out+="$(printf '%q' "$a") "; fi
  done
  echo "${out% }"
  exit 0
fi

# shellcheck source=scripts/setup.sh
. scripts/setup.sh
vellum_setup
if [ $SNP = 1 ] && [ $EMU = 0 ]; then
  why=""
  grep -qw sev_snp /proc/cpuinfo || why="this CPU does not offer SEV-SNP (an AMD EPYC Milan/Genoa/Turin host with SNP enabled in firmware is needed)"
  [ -z "$why" ] && [ ! -e /dev/sev ] && why="/dev/sev is missing (the host kernel's ccp driver with SNP firmware is needed)"
  [ -z "$why" ] && [ ! -w /dev/kvm ] && why="/dev/kvm is not usable (KVM with SNP support, Linux >= 6.11, is needed)"
  if [ -z "$why" ]; then
    v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    read -r major minor <<<"$v" || true
    { [ "${major:-0}" -gt 9 ] || { [ "${major:-0}" = 9 ] && [ "${minor:-0}" -ge 1 ]; }; } || why="QEMU >= 9.1 is needed for sev-snp-guest (found ${major:-?}.${minor:-?})"
  fi
  if [ -n "$why" ]; then
    echo "run-qemu.sh --snp: cannot launch an SEV-SNP guest here: $why." >&2
    echo "Use --print-cmd to see the command line, or run without --snp (plain QEMU)." >&2
    exit 1
  fi
fi
if [ $BUILD = 1 ]; then
  cargo run -q -p vellum-image -- build >&2
fi
[ -f "$IMAGE" ] || { echo "run-qemu.sh: no image at $IMAGE (run without --no-build)" >&2; exit 1; }
if [ -n "$TIMEOUT" ]; then
  exec timeout --foreground "$TIMEOUT" "${cmd[@]}"
fi
exec "${cmd[@]}"
