#!/usr/bin/env python3
"""Ratios of Vellum (the last run directory) against the Linux baseline runs
(the others), and the project's targets. Reads the harness's results.tsv."""
import collections, os, statistics, sys

def load(d):
    v = collections.defaultdict(list)
    for line in open(os.path.join(d, "results.tsv")):
        p = line.rstrip("\n").split("\t")
        if len(p) != 5:
            continue
        try:
            value = float(p[4])
        except ValueError:
            continue
        v[(p[0], p[1], p[3])].append(value)
    return {k: statistics.median(x) for k, x in v.items() if x}

dirs = sys.argv[1:]
if len(dirs) < 2:
    sys.exit("usage: ratios.py LINUX_RUN... VELLUM_RUN")
linux, ours = [load(d) for d in dirs[:-1]], load(dirs[-1])
print("### Vellum against the Linux baseline (median; Linux: best of its runs)\n")
print("| figure | net | Linux | Vellum | ratio | target | met |")
print("|---|---|---:|---:|---:|---:|---|")
for kind, key, target, higher in (("http", "rps", 3, True), ("https", "rps", 2, True),
                                  ("echo", "mbps", 2, True), ("tlsecho", "mbps", 2, True)):
    for net in ("user", "tap"):
        mine = ours.get((kind, net, key))
        theirs = [l[(kind, net, key)] for l in linux if (kind, net, key) in l]
        if mine is None or not theirs:
            continue
        best = max(theirs)
        r = mine / best if best else float("inf")
        print(f"| {kind} {key} | {net} | {best:.1f} | {mine:.1f} | {r:.2f}x | >= {target}x | {'yes' if r >= target else 'NO'} |")
mem = ours.get(("mem", "-", "min_mib"))
size = ours.get(("size", "-", "total"))
# Boot on both nets. Under tap the harness's first curl (sent right after QEMU
# starts, before QEMU has attached the tap) loses its SYN when the tap's
# carrier comes up, so no guest can beat that curl's 0.5 s connect timeout
# there: read the tap figure as ~0.5 s + the real time to serve.
for net in ("user", "tap"):
    boot = ours.get(("boot", net, "first_200_s"))
    lboot = [l[("boot", net, "first_200_s")] for l in linux if ("boot", net, "first_200_s") in l]
    if boot is not None:
        print(f"| QEMU start -> first 200, s | {net} | {min(lboot) if lboot else float('nan'):.2f} | {boot:.3f} | | <= 0.25 s | {'yes' if boot <= 0.25 else 'NO'} |")
if mem is not None:
    print(f"| smallest -m that serves, MiB | - | | {mem:.0f} | | <= 16 | {'yes' if mem <= 16 else 'NO'} |")
if size is not None:
    print(f"| image size, MiB | - | | {size/2**20:.3f} | | <= 2 | {'yes' if size <= 2**21 else 'NO'} |")
