"""Compare the cost model's predictions with a measured ``scaleml-bench`` sweep.

    python bench/validate_model.py SWEEP.json [--params COST.json] [--min-bytes B] [--markdown]

For every row of the sweep that ran one of the model's algorithms (forced, not
``auto``), predicts its time from the parameters (a file written by
``scaleml-bench calibrate``; default: the parameters recorded in the sweep) and
the row's n, P and per-rank nnz, and prints measured vs predicted time with the
relative error, then the median and worst error per algorithm and how often
``auto``'s choice was the measured fastest algorithm.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scaleml import cost_model
from scaleml.sparse import index_dtype

INDEX_FREE = {"float32": 4, "float64": 8}


def predictions(rows: list[dict], params: cost_model.CostParams) -> list[dict]:
    out = []
    for row in rows:
        if row["method"] not in cost_model.ALGORITHMS and row["method"] != "mpi_allreduce":
            continue
        n, P = row["count"], row["ranks"]
        value_bytes = INDEX_FREE[row["dtype"]]
        # MPI_Allreduce is modelled by the dense algorithm minus the local work ScaleML adds.
        algorithm = "dense" if row["method"] == "mpi_allreduce" else row["method"]
        local = params if row["method"] != "mpi_allreduce" else cost_model.CostParams(params.alpha, params.beta, 0.0)
        predicted = cost_model.predict(algorithm, n, P, row["max_nnz_input"], row["global_nnz_input"],
                                       index_dtype(n).itemsize, value_bytes, "dense", local)
        measured = row["time_avg_us"] * 1e-6
        out.append({**row, "predicted_s": predicted, "measured_s": measured,
                    "rel_error": (predicted - measured) / measured})
    return out


def auto_agreement(rows: list[dict]) -> tuple[int, int]:
    """(cases where auto's pick was the fastest forced algorithm within 10%, cases)."""
    cases: dict[tuple, dict] = {}
    for row in rows:
        cases.setdefault((row["count"], row["density"]), {})[row["method"]] = row
    good = total = 0
    for methods in cases.values():
        if "auto" not in methods:
            continue
        forced = {m: r["time_avg_us"] for m, r in methods.items() if m in cost_model.ALGORITHMS}
        picked = methods["auto"]["algorithm"].split("->")[-1]
        if picked in forced:
            total += 1
            good += forced[picked] <= 1.1 * min(forced.values())
    return good, total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path)
    p.add_argument("--params", type=Path, help="cost-model file (default: the sweep's recorded parameters)")
    p.add_argument("--markdown", action="store_true", help="print markdown tables")
    p.add_argument("--min-bytes", type=int, default=0, help="only cases of at least this many bytes (dense)")
    args = p.parse_args()
    doc = json.loads(args.sweep.read_text())
    doc["rows"] = [r for r in doc["rows"] if r["size_bytes"] >= args.min_bytes]
    saved = json.loads(args.params.read_text()) if args.params else doc["meta"]["cost_params"]
    params = cost_model.CostParams(saved["alpha"], saved["beta"], saved["gamma"])
    rows = predictions(doc["rows"], params)
    sep = " | " if args.markdown else "  "
    print(f"params: alpha {params.alpha * 1e6:.2f} us, beta {params.beta * 1e9:.3f} ns/B, "
          f"gamma {params.gamma * 1e9:.4f} ns/B")
    header = ["count", "density", "method", "measured ms", "predicted ms", "error"]
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    else:
        print(sep.join(header))
    for r in rows:
        cells = [f"{r['count']}", f"{r['density']:g}", r["method"], f"{r['measured_s'] * 1e3:.2f}",
                 f"{r['predicted_s'] * 1e3:.2f}", f"{r['rel_error']:+.0%}"]
        print(("| " + " | ".join(cells) + " |") if args.markdown else sep.join(cells))
    print()
    summary = ["method", "cases", "median abs error", "worst abs error"]
    if args.markdown:
        print("| " + " | ".join(summary) + " |\n|" + "---|" * len(summary))
    for method in dict.fromkeys(r["method"] for r in rows):
        errs = [abs(r["rel_error"]) for r in rows if r["method"] == method]
        cells = [method, str(len(errs)), f"{statistics.median(errs):.0%}", f"{max(errs):.0%}"]
        print(("| " + " | ".join(cells) + " |") if args.markdown else sep.join(cells))
    good, total = auto_agreement(doc["rows"])
    if total:
        print(f"\nauto picked an algorithm within 10% of the fastest in {good} of {total} cases")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
