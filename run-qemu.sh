#!/usr/bin/env bash
# Builds what is out of date and boots Vellum under QEMU. See --help.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

usage() {
  cat <<'USAGE'
run-qemu.sh - build the Vellum image and boot it under QEMU

USAGE: ./run-qemu.sh [options] [-- extra QEMU args]

  --kvm                use KVM (-enable-kvm -cpu host) instead of TCG; optional
  --snp                launch as an SEV-SNP guest (needs an SNP-enabled AMD host,
                       KVM with SNP support and QEMU >= 9.1)
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
                       EPYC-v4 under SNP)
  --cbitpos N          SNP C-bit position (default 51)
  --policy HEX         SNP guest policy (default 0x30000: SMT allowed, debug off)
  --id-key PEM         SNP: sign an ID block for this image's measurement with
                       the P-384 key PEM (`image id-block`), so the AMD-SP refuses
                       the launch if the measurement differs
  --author-key PEM     SNP: also sign the ID key with this author key
  --id-block-args S    SNP: extra sev-snp-guest properties, verbatim
  -h, --help           this text

The serial console is on stdout. The guest exits QEMU through isa-debug-exit:
status 33 for a clean test exit, 35 after a kernel panic.
USAGE
}

MEM=32M TIMEOUT="" PRINT=0 BUILD=1 IMAGE=target/vellum.bin KVM=0 SNP=0 NET=1 CPU="" TAP=""
HTTP=8080 ECHO=8007 HTTPS=8443 TLSECHO=7443 CBITPOS=51 POLICY=0x30000 IDARGS="" IDKEY="" AUTHORKEY=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --kvm) KVM=1;;
    --snp) SNP=1;;
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
    *) echo "run-qemu.sh: unknown option $1 (see --help)" >&2; exit 2;;
  esac
  shift
done

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

cmd=(qemu-system-x86_64 -machine q35 -smp 1 -m "$MEM" -nodefaults -no-reboot
     -display none -serial stdio -bios "$IMAGE")
if [ $SNP = 1 ]; then
  cmd[2]="q35,confidential-guest-support=sev0,vmport=off"
  cmd+=(-enable-kvm -cpu "${CPU:-EPYC-v4}"
        -object "sev-snp-guest,id=sev0,cbitpos=$CBITPOS,reduced-phys-bits=1,policy=$POLICY${IDARGS:+,$IDARGS}")
elif [ $KVM = 1 ]; then
  cmd+=(-enable-kvm -cpu "${CPU:-host}" -device isa-debug-exit,iobase=0xf4,iosize=0x04)
else
  cmd+=(-accel tcg -cpu "${CPU:-max}" -device isa-debug-exit,iobase=0xf4,iosize=0x04)
fi
if [ $NET = 1 ] && [ -n "$TAP" ]; then
  cmd+=(-netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" -device virtio-net-pci,netdev=n0,disable-modern=on)
elif [ $NET = 1 ]; then
  fwd="hostfwd=tcp:127.0.0.1:$HTTP-:80,hostfwd=tcp:127.0.0.1:$ECHO-:7"
  fwd+=",hostfwd=tcp:127.0.0.1:$HTTPS-:443,hostfwd=tcp:127.0.0.1:$TLSECHO-:7443"
  cmd+=(-netdev "user,id=n0,restrict=on,$fwd" -device virtio-net-pci,netdev=n0,disable-modern=on)
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
if [ $SNP = 1 ]; then
  why=""
  grep -qw sev_snp /proc/cpuinfo || why="this CPU does not offer SEV-SNP (an AMD EPYC Milan/Genoa/Turin host with SNP enabled in firmware is needed)"
  [ -z "$why" ] && [ ! -e /dev/sev ] && why="/dev/sev is missing (the host kernel's ccp driver with SNP firmware is needed)"
  [ -z "$why" ] && [ ! -w /dev/kvm ] && why="/dev/kvm is not usable (KVM with SNP support, Linux >= 6.11, is needed)"
  if [ -z "$why" ]; then
    v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    set -- $v
    { [ "${1:-0}" -gt 9 ] || { [ "${1:-0}" = 9 ] && [ "${2:-0}" -ge 1 ]; }; } || why="QEMU >= 9.1 is needed for sev-snp-guest (found $*)"
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
