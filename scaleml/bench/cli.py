"""The ``scaleml-bench`` command line: argument parsing, subcommand dispatch, the sweep and its output.

``main`` dispatches ``calibrate`` (:mod:`scaleml.bench.calibrate`) and ``model``
(:mod:`scaleml.bench.model`); anything else (or ``run``) is the sweep, which
prints a table on rank 0 and writes JSON, CSV and a plot on request.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from mpi4py import MPI

from ..datagen import PATTERNS
from .calibrate import calibrate
from .measure import run_case, run_metadata
from .methods import (
    BASELINE,
    BUILTIN,
    COMPRESSION_NAMES,
    DEFAULT_COMPRESSION,
    FORMAT_NAMES,
    METHODS,
    SETUP,
    MethodUnavailable,
    register_compression,
)
from .model import model

DESCRIPTION = "``scaleml-bench``: micro-benchmark of ScaleML's collectives against ``MPI_Allreduce``."

# ---- command line --------------------------------------------------------------------------

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """'4K', '64M', '1G' or a plain number of bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1024, 4K, 64M)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def sizes_from(args: argparse.Namespace, itemsize: int) -> list[int]:
    """Element counts of the sweep."""
    if args.n is not None:
        return list(args.n)
    if args.step_factor < 2:
        raise SystemExit("scaleml-bench: --step-factor must be at least 2")
    counts, size = [], args.min_bytes
    while size <= args.max_bytes:
        counts.append(max(1, size // itemsize))
        size *= args.step_factor
    return counts


def build_parser() -> argparse.ArgumentParser:
    """The parser of the sweep (``scaleml-bench [run] ...``).

    Returns
    -------
    argparse.ArgumentParser
        Sizes, densities, pattern, methods, iterations and output options.
    """
    p = argparse.ArgumentParser(prog="scaleml-bench", description=DESCRIPTION,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", help="element counts (instead of -b/-e/-f)")
    p.add_argument("-b", "--min-bytes", type=parse_size, default=parse_size("4K"), help="smallest size")
    p.add_argument("-e", "--max-bytes", type=parse_size, default=parse_size("16M"), help="largest size")
    p.add_argument("-f", "--step-factor", type=int, default=4, help="size multiplier between cases")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--density", type=float, nargs="+", default=[0.01], help="fractions of non-zeros per rank")
    p.add_argument("--pattern", choices=PATTERNS, default="overlap", help="how ranks' indices relate")
    p.add_argument("--methods", nargs="+", default=["all"],
                   help=f"lossless methods to time besides {BASELINE}: all or any of {sorted(BUILTIN)} (or a "
                   "--compression name)")
    p.add_argument("--compression", nargs="+", default=[], metavar="NAME",
                   help=f"lossy methods and torch.distributed baselines to add: {COMPRESSION_NAMES}")
    p.add_argument("-w", "--warmup", type=int, default=5)
    p.add_argument("-i", "--iterations", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write rows and run metadata as JSON")
    p.add_argument("--csv", type=Path, help="write rows as CSV")
    p.add_argument("--plot", type=Path, help="write a PNG: time vs size, and speedup vs density (matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    return p


def build_calibrate_parser() -> argparse.ArgumentParser:
    """The parser of ``scaleml-bench calibrate``.

    Returns
    -------
    argparse.ArgumentParser
        Largest message, round trips per size and where to save.
    """
    p = argparse.ArgumentParser(prog="scaleml-bench calibrate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Measure alpha by a ping-pong between rank 0 and the last rank, beta "
                                "as the larger of the ping-pong slope and the time per byte when all ranks exchange "
                                "at once, and gamma by timing the C sparse merge on every rank; save them where "
                                "algorithm='auto' reads them.")
    p.add_argument("-e", "--max-bytes", type=parse_size, default=parse_size("16M"), help="largest message")
    p.add_argument("-i", "--iterations", type=int, default=20, help="round trips per size (fewer for big ones)")
    p.add_argument("--output", type=Path, help="file to write (default: scaleml.cost_model.calibration_file())")
    p.add_argument("--no-save", action="store_true", help="only print the parameters")
    return p


def build_model_parser() -> argparse.ArgumentParser:
    """The parser of ``scaleml-bench model``.

    Returns
    -------
    argparse.ArgumentParser
        Counts, ranks, densities, dtype, bits per value, lossy formats and parameter overrides.
    """
    p = argparse.ArgumentParser(prog="scaleml-bench model", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Predicted time of every algorithm from the cost model auto uses.")
    p.add_argument("--n", type=int, nargs="+", default=[1 << 22], help="element counts")
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 64, 1024], help="numbers of ranks")
    p.add_argument("--density", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1], help="non-zeros per rank / n")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--bits", type=float, nargs="+",
                   help="bits per value on the wire, e.g. 8 4 for QSGD-quantized values (default: the dtype's width); "
                   "indices keep their 32/64 bits")
    p.add_argument("--compression", nargs="*", default=["qsgd4", "qsgd8", "fp16", "onebit"], metavar="FORMAT",
                   help="lossy formats of the second table (dense quantized algorithms, the exact dense AllReduce "
                   f"and the allgather of compressed vectors, with bytes per rank): {FORMAT_NAMES}; none: no table")
    p.add_argument("--alpha", type=float, help="seconds per message (default: the saved/current parameters)")
    p.add_argument("--beta", type=float, help="seconds per byte")
    p.add_argument("--gamma", type=float, help="seconds per byte of local work")
    p.add_argument("--delta", type=float, help="seconds of the engine's fixed cost per call")
    p.add_argument("--json", type=Path, help="write the predictions as JSON")
    return p


COLUMNS = [("size_bytes", "{:>11d}"), ("count", "{:>10d}"), ("density", "{:>8.0e}"), ("algorithm", "{:<36s}"),
           ("time_min_us", "{:>11.1f}"), ("time_avg_us", "{:>11.1f}"), ("time_max_us", "{:>11.1f}"),
           ("time_median_us", "{:>11.1f}"), ("algbw_GBps", "{:>8.3f}"), ("busbw_GBps", "{:>8.3f}"),
           ("bytes_sent_per_rank", "{:>12d}"), ("speedup_vs_mpi", "{:>8.2f}"), ("rel_error", "{:>9.1e}"),
           ("max_rel_error", "{:>9.1e}")]


def format_row(row: dict) -> str:
    """One line of the table.

    Parameters
    ----------
    row : dict
        A row of :func:`scaleml.bench.measure.run_case`.

    Returns
    -------
    str
        The fields of :data:`COLUMNS`, aligned under :func:`header`.
    """
    return "  ".join(fmt.format(row[key]) for key, fmt in COLUMNS)


def header() -> str:
    """The table's header line.

    Returns
    -------
    str
        One name per column of :data:`COLUMNS`, as wide as the column.
    """
    widths = [len(fmt.format(0 if "d}" in fmt or "f}" in fmt or "e}" in fmt else "")) for _, fmt in COLUMNS]
    names = ["size(B)", "count", "density", "algorithm", "min(us)", "avg(us)", "max(us)", "med(us)", "algbw", "busbw",
             "sent(B)/rank", "speedup", "rel.err", "max.err"]
    return "  ".join(name.rjust(w) if i != 3 else name.ljust(w) for i, (name, w) in enumerate(zip(names, widths)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scaleml-bench`` and ``python -m scaleml.bench``.

    Parameters
    ----------
    argv : Sequence[str], optional
        Arguments without the program name (default: ``sys.argv[1:]``); a first
        ``calibrate`` or ``model`` selects that subcommand, ``run`` or none the sweep.

    Returns
    -------
    int
        Exit status: 0, or 2 for a usage error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "calibrate":
        return calibrate(build_calibrate_parser().parse_args(argv[1:]))
    if argv and argv[0] == "model":
        return model(build_model_parser().parse_args(argv[1:]))
    if argv and argv[0] == "run":
        argv = argv[1:]
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """The sweep: every case, every method, one row each."""
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    methods = list(BUILTIN) if "all" in args.methods else list(args.methods)
    names = [n for name in args.compression for n in (DEFAULT_COMPRESSION if name == "all" else [name])]
    unknown_methods, unknown_names, skipped = [], [], []
    for name in [m for m in methods if m not in METHODS] + names:
        try:
            register_compression(name)
        except ValueError:
            (unknown_names if name in names else unknown_methods).append(name)
        except MethodUnavailable as exc:
            skipped.append((name, str(exc)))
    if unknown_methods or unknown_names:
        if rank == 0:
            if unknown_methods:
                print(f"scaleml-bench: unknown method(s) {unknown_methods}; known: {sorted(BUILTIN)} and the "
                      "--compression names", file=sys.stderr)
            if unknown_names:
                print(f"scaleml-bench: unknown compression {', '.join(map(repr, unknown_names))}; names: "
                      f"{COMPRESSION_NAMES}", file=sys.stderr)
        return 2
    methods = list(dict.fromkeys(m for m in methods + names if m in METHODS))
    for name in [m for m in methods if m in SETUP]:
        try:
            SETUP[name](comm)  # collective, and it fails on every rank alike
        except MethodUnavailable as exc:
            skipped.append((name, str(exc)))
            methods.remove(name)
    if rank == 0:
        for name, reason in skipped:
            print(f"scaleml-bench: skipping {name}: {reason}", file=sys.stderr)
    dtype = np.dtype(args.dtype)
    cases = [(n, d) for n in sizes_from(args, dtype.itemsize) for d in args.density]
    meta = run_metadata(comm)
    if rank == 0 and not args.quiet:
        print(f"# scaleml-bench: {meta['ranks']} ranks on {meta['hosts']} host(s), {args.dtype}, pattern "
              f"{args.pattern}, warmup {args.warmup}, iterations {args.iterations}, commit {meta['commit']}")
        print(f"# {meta['mpi']}")
        print(header(), flush=True)
    # A progress bar on an interactive terminal; rows go through it so they do not tear it.
    progress, emit = None, print
    if rank == 0 and sys.stderr.isatty() and len(cases) > 1:
        try:
            from tqdm import tqdm

            progress = tqdm(total=len(cases), desc="scaleml-bench", unit="case", file=sys.stderr, leave=False)
            emit = progress.write
        except ImportError:  # progress bars are optional
            progress = None
    rows = []
    for n, density in cases:
        case_rows = run_case(comm, n, dtype, density, args.pattern, methods, args.warmup, args.iterations, args.seed)
        rows.extend(case_rows)
        if rank == 0 and not args.quiet:
            for row in case_rows:
                emit(format_row(row))
            sys.stdout.flush()
        if progress is not None:
            progress.update()
    if progress is not None:
        progress.close()
    if rank == 0:
        if args.json:
            args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        if args.csv:
            with args.csv.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
                writer.writeheader()
                writer.writerows(rows)
        if args.plot:
            plot(rows, meta, args.plot)
    return 0


def plot(rows: list[dict], meta: dict, path: Path) -> None:
    """Time vs size per method (at the first density) and speedup vs density (at the largest size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_speed) = plt.subplots(1, 2, figsize=(13, 5))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    densities = sorted({r["density"] for r in rows})
    largest = max(r["size_bytes"] for r in rows)
    for m in methods:
        sel = sorted((r for r in rows if r["method"] == m and r["density"] == densities[0]),
                     key=lambda r: r["size_bytes"])
        ax_time.plot([r["size_bytes"] for r in sel], [r["time_avg_us"] for r in sel], marker="o", label=m)
        sel = sorted((r for r in rows if r["method"] == m and r["size_bytes"] == largest), key=lambda r: r["density"])
        ax_speed.plot([r["density"] for r in sel], [r["speedup_vs_mpi"] for r in sel], marker="o", label=m)
    ax_time.set(xscale="log", yscale="log", xlabel="message size (bytes, dense)", ylabel="time (us)",
                title=f"time vs size, density {densities[0]:g}")
    ax_speed.set(xscale="log", yscale="log", xlabel="density (non-zeros / n per rank)",
                 ylabel="speedup over MPI_Allreduce", title=f"speedup vs density, {largest} bytes")
    ax_speed.axhline(1.0, color="gray", lw=0.8)
    for ax in (ax_time, ax_speed):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"scaleml-bench: {meta['ranks']} ranks on {meta['hosts']} host(s), commit {meta['commit']}, "
                 f"{meta['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
