#!/usr/bin/env bash
# Boot benchmark: time from QEMU start to the console line "vellum ready"
# (and, once the network is up, to the first HTTP 200), median of N runs, plus
# the image size. Prints figures; asserts nothing.
#
#   bench/boot.sh [--runs N] [--mem SIZE]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=5 MEM=32M
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift;;
    --mem) MEM=$2; shift;;
    -h|--help) sed -n '2,7p' "$0"; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
  shift
done
. scripts/setup.sh
vellum_setup
cargo run -q -p vellum-image -- build >/dev/null
python3 - "$RUNS" "$MEM" <<'PY'
import os, socket, statistics, subprocess, sys, time
runs, mem = int(sys.argv[1]), sys.argv[2]
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
ready, first200 = [], []
for i in range(runs):
    hp = free_port()
    cmd = ["./run-qemu.sh", "--no-build", "--mem", mem, "--http-port", str(hp),
           "--echo-port", str(free_port()), "--https-port", str(free_port()),
           "--tls-echo-port", str(free_port()), "--print-cmd"]
    qcmd = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    t0 = time.monotonic()
    p = subprocess.Popen(qcmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    t_ready = None
    for line in p.stdout:
        if b"vellum ready" in line:
            t_ready = time.monotonic() - t0
            break
    t_http = None
    deadline = time.monotonic() + 10
    while t_http is None and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", hp), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    t_http = time.monotonic() - t0
        except OSError:
            time.sleep(0.005)
    p.kill(); p.wait()
    if t_ready is not None: ready.append(t_ready)
    if t_http is not None: first200.append(t_http)
size = os.path.getsize("target/vellum.bin")
fmt = lambda v: f"median {statistics.median(v):.3f} s (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})" if v else "n/a"
print(f"image size: {size} bytes ({size/1e6:.3f} MB, {size>>10} KiB)")
print(f"QEMU start -> 'vellum ready': {fmt(ready)}")
print(f"QEMU start -> first HTTP 200: {fmt(first200)}")
print("Linux baseline (nginx guest, shared/bench): image 19.8 MB, first 200 in 4.75 s")
if first200:
    print(f"ratio first-200 time vs Linux baseline: {4.75/statistics.median(first200):.1f}x faster")
PY
