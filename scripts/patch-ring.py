#!/usr/bin/env python3
"""Unpacks ring 0.17.14 (the crates.io package, checked against its published
SHA-256) into .vendor/ring and applies Vellum's one-line change, for the
`[patch.crates-io]` entry in the root Cargo.toml.

Why: ring builds its (pregenerated, SysV ELF) assembly only for the operating
systems it lists, and bare metal (`target_os = "none"`) is not among them
(ring issue #1793), because x86_64-unknown-none has no SSE. Our target spec
enables SSE/AVX/AES-NI/PCLMULQDQ, so the ELF assembly is correct for it;
without it the AES-GCM, GHASH, ChaCha20 and P-256 routines are missing at link
time. We keep ring's code out of our repository and patch it at set-up time.

Usage: scripts/patch-ring.py [WORKSPACE_ROOT]   (idempotent)
"""
import glob, hashlib, io, os, shutil, sys, tarfile, urllib.request

VERSION = "0.17.14"
SHA256 = "a4689e6c2294d81e88dc6261c768b63bc4fcdb852be6d1352498b114f61383b7"
URL = f"https://static.crates.io/crates/ring/ring-{VERSION}.crate"
STAMP = f"vellum-patched-{VERSION}-1"

root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
dest = os.path.join(root, ".vendor", "ring")
if os.path.exists(os.path.join(dest, STAMP)):
    sys.exit(0)

data = None
for cached in glob.glob(os.path.expanduser(f"~/.cargo/registry/cache/*/ring-{VERSION}.crate")):
    with open(cached, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() == SHA256:
        break
    data = None
if data is None:
    with urllib.request.urlopen(URL, timeout=60) as r:
        data = r.read()
digest = hashlib.sha256(data).hexdigest()
if digest != SHA256:
    sys.exit(f"patch-ring: ring-{VERSION}.crate has SHA-256 {digest}, expected {SHA256}")

tmp = dest + ".tmp"
shutil.rmtree(tmp, ignore_errors=True)
os.makedirs(tmp)
with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
    t.extractall(tmp, filter="data")
src = os.path.join(tmp, f"ring-{VERSION}")


def edit(path, anchor, new, count=1):
    p = os.path.join(src, path)
    with open(p) as f:
        text = f.read()
    if text.count(anchor) != count:
        sys.exit(f"patch-ring: anchor not found exactly {count}x in {path}: {anchor!r}")
    with open(p, "w") as f:
        f.write(text.replace(anchor, new))


# 1. Bare metal uses the SysV ELF ABI on x86_64 (our target spec has SSE).
edit("build.rs", '    "solaris",\n];', '    "solaris",\n    // VELLUM: bare metal with an SSE-enabled target spec (x86_64-vellum.json).\n    "none",\n];')
# 2. Keep it out of our workspace, and quiet lints newer nightlies raise in it.
with open(os.path.join(src, "Cargo.toml"), "a") as f:
    f.write("\n# VELLUM: not a member of the Vellum workspace.\n[workspace]\n\n[lints.rust]\nmismatched_lifetime_syntaxes = \"allow\"\n")
open(os.path.join(src, STAMP), "w").close()

shutil.rmtree(dest, ignore_errors=True)
os.makedirs(os.path.dirname(dest), exist_ok=True)
os.rename(src, dest)
shutil.rmtree(tmp, ignore_errors=True)
print(f"patch-ring: ring {VERSION} unpacked and patched in {dest}", file=sys.stderr)
