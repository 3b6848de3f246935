"""Markdown table of bench/first_calls.py results: every run's speedup per method, the worst, and the A/A range.

    python bench/first_calls_table.py docs/results/first_calls_emu4x1gbit.jsonl [more.jsonl ...]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(paths: list[str]) -> None:
    print("| file | method | warm-up calls | MPI (ms, median of runs) | speedup, every run | worst | A/A range |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        runs: dict[tuple[str, int], list[dict]] = defaultdict(list)
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    runs[row["method"], row["warmup"]].append(row)
        for (method, warmup), rows in runs.items():
            speedups = [r["speedup"] for r in rows]
            aa = [r["aa"] for r in rows]
            mpi = sorted(r["mpi_s"] for r in rows)[len(rows) // 2] * 1e3
            print(f"| `{path.rsplit('/', 1)[-1]}` | `{method}` | {warmup} | {mpi:.1f} | "
                  f"{', '.join(f'{s:.2f}x' for s in speedups)} | **{min(speedups):.2f}x** | "
                  f"{min(aa):.2f}-{max(aa):.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
