"""Markdown tables of a ``scaleml-bench`` sweep: time and speedup over MPI_Allreduce per method.

    python bench/sweep_table.py SWEEP.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    doc = json.loads(Path(sys.argv[1]).read_text())
    rows, meta = doc["rows"], doc["meta"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    print(f"{meta['ranks']} ranks, {meta['mpi']}, commit {meta['commit']}, {meta['date']}, "
          f"cost parameters {meta['cost_params']}\n")
    print("| size | count | density | " + " | ".join(methods) + " | auto picked |")
    print("|---:|---:|---:|" + "---:|" * len(methods) + "---|")
    cases: dict[tuple, dict] = {}
    for r in rows:
        cases.setdefault((r["size_bytes"], r["count"], r["density"]), {})[r["method"]] = r
    for (size, count, density), by_method in cases.items():
        cells = []
        for m in methods:
            r = by_method.get(m)
            if r is None:
                cells.append("")
            elif m == "mpi_allreduce":
                cells.append(f"{r['time_avg_us'] / 1e3:.2f} ms")
            else:
                cells.append(f"{r['time_avg_us'] / 1e3:.2f} ms ({r['speedup_vs_mpi']:.2f}x)")
        picked = by_method["auto"]["algorithm"].split("->")[-1] if "auto" in by_method else ""
        print(f"| {size} | {count} | {density:g} | " + " | ".join(cells) + f" | {picked} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
