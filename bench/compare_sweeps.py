"""Before/after table of two ``scaleml-bench`` sweeps run with the same command: speedup over MPI_Allreduce.

    python bench/compare_sweeps.py BEFORE.json AFTER.json [--methods auto dropin] [--statistic avg|median]

One row per (size, density): MPI_Allreduce's time in the after run, and for
each method its speedup over MPI_Allreduce measured in the same run (before ->
after), with the algorithm it ran after. ``avg`` compares the mean time of the
iterations (the only statistic older sweeps hold); ``median`` uses the median
over iterations of the slowest rank where the sweep has it. The last lines count
the rows below 0.9x.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def speedups(path: Path, statistic: str) -> tuple[dict, dict]:
    doc = json.loads(path.read_text())
    table: dict[tuple, dict] = {}
    for r in doc["rows"]:
        key = (r["size_bytes"], r["density"])
        value = r.get("speedup_median_vs_mpi", r["speedup_vs_mpi"]) if statistic == "median" else r["speedup_vs_mpi"]
        table.setdefault(key, {})[r["method"]] = (value, r["algorithm"].split("->")[-1], r)
    return table, doc.get("meta", {})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--methods", nargs="+", default=["auto", "dropin"])
    p.add_argument("--statistic", choices=["avg", "median"], default="avg")
    args = p.parse_args(argv)
    before, meta_b = speedups(args.before, args.statistic)
    after, meta_a = speedups(args.after, args.statistic)
    print(f"before: commit {meta_b.get('commit')}, after: commit {meta_a.get('commit')}; {meta_a.get('ranks')} ranks; "
          f"speedup over MPI_Allreduce ({args.statistic} time), before -> after\n")
    print("| bytes | density | MPI_Allreduce | " + " | ".join(args.methods) + " |")
    print("|---:|---:|---:|" + "---|" * len(args.methods))
    below = {m: [0, 0] for m in args.methods}
    for key in sorted(after):
        size, density = key
        mpi = after[key]["mpi_allreduce"][2]
        mpi_us = mpi.get("time_median_us", mpi["time_avg_us"]) if args.statistic == "median" else mpi["time_avg_us"]
        cells = []
        for m in args.methods:
            b = before.get(key, {}).get(m)
            a = after[key][m]
            below[m][0] += b is not None and b[0] < 0.9
            below[m][1] += a[0] < 0.9
            cells.append(f"{b[0]:.2f}x -> **{a[0]:.2f}x** {a[1]}" if b else f"**{a[0]:.2f}x** {a[1]}")
        print(f"| {size} | {density:g} | {mpi_us / 1e3:.3f} ms | " + " | ".join(cells) + " |")
    print()
    for m, (b, a) in below.items():
        print(f"- {m}: rows below 0.9x: {b} before, {a} after (of {len(after)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
