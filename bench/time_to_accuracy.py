#!/usr/bin/env python3
"""Time to a target accuracy from ``scaleml-train --metrics`` files: a markdown table and a comparison plot.

    python bench/time_to_accuracy.py exact.json qsgd4.json topk.json --target 0.8 --plot cmp.png

The first file is the baseline (the exact run): every ratio is its time (or
bytes) to the target divided by the run's, so 2.0x means "reached the target
twice as soon". A run reaches the target at the end of the first epoch whose
test accuracy is at least ``--target`` (default: the target the runs were
given with ``--target-accuracy``). Times are the trainer's ``elapsed``
(training time: steps and replica checks, the slowest rank's, summed over
epochs; evaluations excluded) and ``elapsed_wall`` (evaluations included).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

__all__ = ["first_at_target", "main", "rows", "table"]


def first_at_target(doc: dict[str, Any], target: float) -> dict[str, Any] | None:
    """The first epoch record of a ``--metrics`` document whose test accuracy is at least ``target``, or None."""
    return next((h for h in doc["epochs"] if h.get("test_accuracy", -1.0) >= target), None)


def rows(docs: Sequence[tuple[str, dict[str, Any]]], target: float) -> list[dict[str, Any]]:
    """One row per run: where it reached ``target`` and its ratios against the first run.

    Parameters
    ----------
    docs : sequence of (str, dict)
        A label and the ``--metrics`` document of each run; the first is the
        baseline.
    target : float
        The target test accuracy.

    Returns
    -------
    list of dict
        ``label``, ``compression``, ``epochs`` (run), ``epoch`` (reaching the
        target, or None), ``time``, ``wall``, ``bytes`` (to the target, or
        None), ``speedup`` and ``bytes_ratio`` (baseline / run, or None),
        ``final_accuracy``, ``epoch_time`` (mean training time per epoch),
        ``reduce_share`` (gradient averaging over training time).
    """
    out = []
    base = first_at_target(docs[0][1], target)
    for label, doc in docs:
        hit = first_at_target(doc, target)
        epochs = doc["epochs"]
        train_time = sum(h["time_train"] for h in epochs)
        row = {"label": label, "compression": doc["config"]["compression"], "epochs": len(epochs),
               "epoch": hit["epoch"] if hit else None, "time": hit["elapsed"] if hit else None,
               "wall": hit.get("elapsed_wall") if hit else None,
               "bytes": hit["bytes_total_per_rank"] if hit else None,
               "final_accuracy": epochs[-1]["test_accuracy"], "epoch_time": train_time / len(epochs),
               "reduce_share": sum(h["time_reduce"] for h in epochs) / train_time if train_time else 0.0}
        row["speedup"] = base["elapsed"] / hit["elapsed"] if hit and base else None
        row["bytes_ratio"] = base["bytes_total_per_rank"] / hit["bytes_total_per_rank"] if hit and base else None
        out.append(row)
    return out


def table(result: Sequence[dict[str, Any]], target: float) -> str:
    """The rows of :func:`rows` as a markdown table."""
    def num(v: float | None, fmt: str) -> str:
        return "not reached" if v is None else format(v, fmt)

    lines = [f"target test accuracy {target:.4f}", "",
             "| run | compression | epoch at target | time to target (s) | vs exact | wall time incl. evaluation (s) | "
             "MB sent per rank to target | vs exact | final accuracy (epochs run) | training s/epoch | "
             "averaging share |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result:
        lines.append(f"| {r['label']} | {r['compression']} | {num(r['epoch'], 'd')} | {num(r['time'], '.1f')} | "
                     f"{num(r['speedup'], '.2f')}x | {num(r['wall'], '.1f')} | "
                     f"{num(None if r['bytes'] is None else r['bytes'] / 1e6, '.1f')} | "
                     f"{num(r['bytes_ratio'], '.1f')}x | {100 * r['final_accuracy']:.2f}% ({r['epochs']}) | "
                     f"{r['epoch_time']:.1f} | {100 * r['reduce_share']:.0f}% |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table (and draw the plot) for the metrics files on the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("metrics", nargs="+", help="--metrics JSON files; the first is the baseline")
    p.add_argument("--labels", nargs="+", help="one label per file (default: the compression)")
    p.add_argument("--target", type=float, help="target test accuracy (default: the runs' --target-accuracy)")
    p.add_argument("--plot", metavar="OUT.png", help="accuracy and loss against time and bytes, every run")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    docs = [json.loads(Path(f).read_text()) for f in args.metrics]
    labels = args.labels or [d["config"]["compression"] for d in docs]
    if len(labels) != len(docs):
        p.error(f"{len(docs)} files but {len(labels)} labels")
    target = args.target
    if target is None:
        given = {d["config"].get("target_accuracy") for d in docs} - {None}
        if len(given) != 1:
            p.error(f"give --target: the runs were given targets {sorted(given) or 'none'}")
        target = given.pop()
    named = list(zip(labels, docs))
    print(table(rows(named, target), target))
    if args.plot:
        from scaleml.train import plot_comparison

        plot_comparison(named, args.plot, args.title, target=target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
