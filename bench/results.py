"""Reading the shared harness's results, for the bench scripts' own tables.

`load(listfile)`: {(figure, unit): [value per run]} from every run directory
named in `listfile` (the harness's LB_RUNDIR_FILE), throughput figures only.
`fmt(values)`: "median (min-max)".
"""
import os
import statistics


def load(listfile):
    v = {}
    for d in open(listfile).read().split():
        for line in open(os.path.join(d, "results.tsv")):
            p = line.rstrip("\n").split("\t")
            if len(p) == 5 and p[3] in ("mbps", "rps"):
                try:
                    v.setdefault((p[0], p[3]), []).append(float(p[4]))
                except ValueError:
                    pass
    return v


def fmt(values):
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"
