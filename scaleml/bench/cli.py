"""The ``scaleml-bench`` command line: subcommands, validation of every flag, the sweep and its output.

``scaleml-bench [run] ...`` is the sweep (the default subcommand: options without one run it), which prints
a table on rank 0 and writes JSON, CSV and a plot on request; ``calibrate``
(:mod:`scaleml.bench.calibrate`) measures the cost model's parameters and ``model``
(:mod:`scaleml.bench.model`) prints its predictions. Every rank parses the same arguments and checks them
before any measurement; rank 0 alone prints help, usage and errors (argparse style), and every rank exits
with status 2 on a usage error.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from mpi4py import MPI

from .._version import __version__
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
    make_format,
    register_compression,
)
from .model import model

PROG = "scaleml-bench"
DESCRIPTION = "``scaleml-bench``: micro-benchmark of ScaleML's collectives against ``MPI_Allreduce``."
SCHEMA_VERSION = 2
"""Version of the JSON document ``--json`` writes: 2 added ``meta.schema_version``, ``argv``, ``seed``,
``warmup``, ``iterations``, ``versions``, and the rows' ``collective`` (nccl-tests' bandwidth of each) and
``wrong`` (nccl-tests' ``#wrong``)."""
COMMANDS = {
    "run": "the sweep: time every method against MPI_Allreduce over sizes and densities (the default)",
    "calibrate": "measure alpha, beta, gamma, delta and the lossy formats' coding times of this machine and save "
                 "them for algorithm='auto'",
    "model": "print the cost model's predicted time of every algorithm at any scale",
}
MAX_CASES = 10_000
"""The most sizes a sweep may have (a typo such as ``--stepbytes 1`` would otherwise run for ever)."""

FLAG_MAP = """\
flags of nccl-tests and the OSU micro-benchmarks:
  nccl-tests          here                                 meaning
  -b, --minbytes      -b, --minbytes, --min-bytes          smallest size (bytes of the dense vector)
  -e, --maxbytes      -e, --maxbytes, --max-bytes          largest size
  -f, --stepfactor    -f, --stepfactor, --step-factor      size multiplier between cases
  -i, --stepbytes     --stepbytes                          size increment instead of -f
  -n, --iters         -n, --iters, -i, --iterations        timed iterations (-i: OSU's, and this tool's
                                                           before; nccl-tests' -i is --stepbytes here)
  -w, --warmup_iters  -w, --warmup_iters, -x, --warmup     untimed iterations first (-x: OSU's)
  -c, --check         -c, --check                          1: count lossless values off the exact sum (#wrong)
  -d, --datatype      -d, --datatype, --dtype              float (float32) or double (float64)
  -o, --op            -o, --op                             sum (the only reduction)
--n COUNT... (two dashes) sets element counts instead of -b/-e/-f; -n (one dash) is the iterations.

output, as nccl-tests: per size, time (us), algbw = data size / time and busbw = algbw * factor (GB/s),
factor 2(P-1)/P for the AllReduce-based methods, and (P-1)/P with data size P * size for the
allgather-based ones (allgather:FORMAT); then "# Out of bounds values : N OK|FAILED" (-c 1) and
"# Avg bus bandwidth    : X GB/s METHOD", the mean busbw over sizes, per method. With dropin and a
density below 1, a line above the table says that dropin reads the dense vector while the sparse rows get
the non-zeros as input.
"""

# ---- command line --------------------------------------------------------------------------

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_DTYPES = {"float32": "float32", "float": "float32", "float64": "float64", "double": "float64"}


def parse_size(text: str) -> int:
    """A size in bytes: '4K', '64M', '1G' (powers of 1024, an optional B) or a plain number.

    Parameters
    ----------
    text : str
        The command line's text.

    Returns
    -------
    int
        Bytes (0 is parsed; the validation rejects it where a size must be positive).

    Raises
    ------
    argparse.ArgumentTypeError
        Not a size (negative numbers included).
    """
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1024, 4K, 64M)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def parse_dtype(text: str) -> str:
    """The value type: ``float32`` or ``float64``, also by nccl-tests' names ``float`` and ``double``.

    Parameters
    ----------
    text : str
        The command line's text.

    Returns
    -------
    str
        ``float32`` or ``float64``.

    Raises
    ------
    argparse.ArgumentTypeError
        Another type.
    """
    try:
        return _DTYPES[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from float32/float, "
                                         "float64/double)") from None


def format_size(nbytes: float) -> str:
    """Bytes in binary units: ``512 B``, ``4 KiB``, ``1.5 MiB``, ``2 GiB``.

    Parameters
    ----------
    nbytes : float
        A size in bytes.

    Returns
    -------
    str
        The size, at most three significant digits, in the largest unit it reaches.
    """
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} B"


def sizes_from(args: argparse.Namespace, itemsize: int) -> list[int]:
    """Element counts of the sweep: ``--n``, or the sizes from ``-b`` to ``-e`` (``-f`` times or ``--stepbytes``
    more each case), in elements of ``itemsize`` bytes (at least one).

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``run`` arguments (checked by :func:`validate_run`).
    itemsize : int
        Bytes per element.

    Returns
    -------
    list[int]
        The element count of every case, in order.

    Raises
    ------
    ValueError
        A step that would never reach ``-e`` (``-f`` below 2 or ``--stepbytes`` below 1).
    """
    if args.n is not None:
        return list(args.n)
    stepbytes = getattr(args, "stepbytes", None)
    if (stepbytes is not None and stepbytes < 1) or (stepbytes is None and args.step_factor < 2):
        raise ValueError("the step must be --stepbytes >= 1 or -f/--stepfactor >= 2")
    counts, size = [], args.min_bytes
    while size <= args.max_bytes:
        counts.append(max(1, size // itemsize))
        size = size + stepbytes if stepbytes is not None else size * args.step_factor
    return counts


def _rank() -> int:
    return MPI.COMM_WORLD.Get_rank()


class BenchArgumentParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose help, usage and error messages only rank 0 prints.

    Every rank parses the same command line, so every rank exits alike (status 2 on an error, 0 after
    ``--help``) while the message appears once under ``mpiexec``.
    """

    def _print_message(self, message: str, file=None) -> None:  # noqa: ANN001 (argparse's signature)
        if _rank() == 0:
            super()._print_message(message, file)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help (where there is one), and the epilog's table as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:  # laid out by hand: the epilogs' tables
            return argparse.RawDescriptionHelpFormatter._fill_text(self, text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    sizes = p.add_argument_group("sizes (nccl-tests' -b/-e/-f, or --n)")
    sizes.add_argument("--n", type=int, nargs="+", metavar="COUNT",
                       help="element counts (instead of -b/-e/-f; not -n, the iterations)")
    sizes.add_argument("-b", "--minbytes", "--min-bytes", dest="min_bytes", type=parse_size,
                       default=parse_size("4K"), metavar="SIZE", help="smallest size, bytes of the dense vector")
    sizes.add_argument("-e", "--maxbytes", "--max-bytes", dest="max_bytes", type=parse_size,
                       default=parse_size("16M"), metavar="SIZE", help="largest size")
    sizes.add_argument("-f", "--stepfactor", "--step-factor", dest="step_factor", type=int, default=4,
                       metavar="F", help="size multiplier between cases (at least 2)")
    sizes.add_argument("--stepbytes", type=parse_size, metavar="SIZE",
                       help="size increment between cases instead of -f (nccl-tests' -i)")
    data = p.add_argument_group("data")
    data.add_argument("-d", "--datatype", "--dtype", dest="dtype", type=parse_dtype, default="float32",
                      metavar="TYPE", help="float32 (float) or float64 (double)")
    data.add_argument("-o", "--op", choices=["sum"], default="sum", help="the reduction")
    data.add_argument("--density", type=float, nargs="+", default=[0.01], metavar="D",
                      help="fractions of non-zeros per rank, each in (0, 1]")
    data.add_argument("--pattern", choices=PATTERNS, default="overlap", help="how ranks' indices relate")
    data.add_argument("--seed", type=int, default=0, help="seed of the random input (at least 0)")
    which = p.add_argument_group("methods")
    which.add_argument("--methods", nargs="+", default=["all"], metavar="NAME",
                       help=f"lossless methods to time besides {BASELINE}: all or any of {sorted(BUILTIN)} (or a "
                       "--compression name)")
    which.add_argument("--compression", nargs="+", default=[], metavar="NAME",
                       help=f"lossy methods and torch.distributed baselines to add: {COMPRESSION_NAMES}")
    timing = p.add_argument_group("timing (nccl-tests' -n/-w/-c)")
    timing.add_argument("-n", "--iters", "-i", "--iterations", dest="iterations", type=int, default=10,
                        metavar="N", help="timed iterations per method (at least 1)")
    timing.add_argument("-w", "--warmup_iters", "-x", "--warmup", dest="warmup", type=int, default=5,
                        metavar="N", help="untimed iterations first (at least 0)")
    timing.add_argument("-c", "--check", type=int, choices=[0, 1], default=1,
                        help="1: lossless results must match the exact sum to rounding, else exit status 1")
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, metavar="FILE", help="write rows and run metadata as JSON")
    out.add_argument("--csv", type=Path, metavar="FILE", help="write rows as CSV")
    out.add_argument("--plot", type=Path, metavar="FILE",
                     help="write a plot (PNG, or another matplotlib format by the suffix): time vs size per "
                     "method and density, and speedup vs density")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress on stderr from rank 0: a bar on a terminal, else one '#' line per case, "
                     "as under mpiexec (default: on for sweeps of more than one case)")
    out.add_argument("--quiet", action="store_true", help="nothing on stdout")


def _add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-e", "--maxbytes", "--max-bytes", dest="max_bytes", type=parse_size, default=parse_size("16M"),
                   metavar="SIZE", help="largest message")
    p.add_argument("-n", "--iters", "-i", "--iterations", dest="iterations", type=int, default=20, metavar="N",
                   help="round trips per size (fewer for big ones; at least 1)")
    p.add_argument("--output", type=Path, metavar="FILE",
                   help="file to write (default: scaleml.cost_model.calibration_file())")
    p.add_argument("--no-save", action="store_true", help="only print the parameters")


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, nargs="+", default=[1 << 22], metavar="COUNT", help="element counts")
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 64, 1024], metavar="P", help="numbers of ranks")
    p.add_argument("--density", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1], metavar="D",
                   help="non-zeros per rank / n, each in (0, 1]")
    p.add_argument("-d", "--datatype", "--dtype", dest="dtype", type=parse_dtype, default="float32",
                   metavar="TYPE", help="float32 (float) or float64 (double)")
    p.add_argument("--bits", type=float, nargs="+",
                   help="bits per value on the wire, in (0, 64], e.g. 8 4 for QSGD-quantized values (default: the "
                   "dtype's width); indices keep their 32/64 bits")
    p.add_argument("--compression", nargs="*", default=["qsgd4", "qsgd8", "fp16", "onebit"], metavar="FORMAT",
                   help="lossy formats of the second table (dense quantized algorithms, the exact dense AllReduce "
                   f"and the allgather of compressed vectors, with bytes per rank): {FORMAT_NAMES}; none: no table")
    p.add_argument("--alpha", type=float, help="seconds per message (default: the saved/current parameters)")
    p.add_argument("--beta", type=float, help="seconds per byte")
    p.add_argument("--gamma", type=float, help="seconds per byte of local work")
    p.add_argument("--delta", type=float, help="seconds of the engine's fixed cost per call")
    p.add_argument("--ranks-per-node", type=int, default=8, metavar="L",
                   help="ranks per node of the node-aware tables (flat algorithms next to hierarchical_dense; "
                   "for the lossy formats, hierarchical_quantized; for sparse data, hierarchical_sparse)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the predictions as JSON")


_CALIBRATE_DESCRIPTION = ("Measure alpha_intra and beta_intra by a ping-pong within a node (SCALEML_RANKS_PER_NODE "
                          "emulates nodes), alpha by a ping-pong between rank 0 and a rank of another node (one "
                          "node: alpha and beta keep their defaults), beta as the larger of the "
                          "ping-pong slope and the time per byte when all ranks exchange at once, and gamma by "
                          "timing the C sparse merge on every rank, and each lossy format's encode, decode and "
                          "decode-and-add seconds per value by timing its C kernels on every rank; save them where "
                          "algorithm='auto' reads them. "
                          "Run it under mpiexec -n 2 or more.")
_MODEL_DESCRIPTION = "Predicted time of every algorithm from the cost model auto uses (no MPI job needed)."


def build_parser() -> argparse.ArgumentParser:
    """The parser of the sweep alone (``scaleml-bench [run] ...``).

    Returns
    -------
    argparse.ArgumentParser
        Sizes, data, methods, timing and output options; :func:`validate_run` checks their values.
    """
    p = BenchArgumentParser(prog=PROG, description=DESCRIPTION, epilog=FLAG_MAP, formatter_class=_HelpFormatter)
    _add_run_arguments(p)
    return p


def build_calibrate_parser() -> argparse.ArgumentParser:
    """The parser of ``scaleml-bench calibrate``.

    Returns
    -------
    argparse.ArgumentParser
        Largest message, round trips per size and where to save.
    """
    p = BenchArgumentParser(prog=f"{PROG} calibrate", formatter_class=_HelpFormatter,
                            description=_CALIBRATE_DESCRIPTION)
    _add_calibrate_arguments(p)
    return p


def build_model_parser() -> argparse.ArgumentParser:
    """The parser of ``scaleml-bench model``.

    Returns
    -------
    argparse.ArgumentParser
        Counts, ranks, densities, dtype, bits per value, lossy formats and parameter overrides.
    """
    p = BenchArgumentParser(prog=f"{PROG} model", formatter_class=_HelpFormatter, description=_MODEL_DESCRIPTION)
    _add_model_arguments(p)
    return p


def build_main_parser() -> argparse.ArgumentParser:
    """The whole command line: subcommands ``run`` (the default), ``calibrate`` and ``model``.

    Each subcommand has its own ``--help``; the parsed namespace carries ``command``, ``handler`` (the function
    to call), ``validate`` (its checks of values, :func:`validate_run` and the like) and ``parser`` (the
    subcommand's parser, for its errors).

    Returns
    -------
    argparse.ArgumentParser
        The top-level parser; :func:`main` inserts ``run`` when no subcommand is named.
    """
    p = BenchArgumentParser(
        prog=PROG, formatter_class=_HelpFormatter,
        description="Micro-benchmark of ScaleML's collectives against MPI_Allreduce, in the conventions of "
        "nccl-tests and the OSU micro-benchmarks. Run it under mpiexec; rank 0 prints.",
        epilog=f"Without a subcommand, {PROG} runs the sweep:\n  {PROG} --n 4194304 --density 0.01\nis\n"
        f"  {PROG} run --n 4194304 --density 0.01\n{PROG} SUBCOMMAND --help lists the options of one "
        "(run's: sizes, methods, nccl-tests' flags).")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", title="subcommands", metavar="{run,calibrate,model}",
                           parser_class=BenchArgumentParser)
    specs: list[tuple[str, Callable, Callable, Callable, str, str | None]] = [
        ("run", _add_run_arguments, run, validate_run, DESCRIPTION.replace("``", ""), FLAG_MAP),
        ("calibrate", _add_calibrate_arguments, calibrate, validate_calibrate, _CALIBRATE_DESCRIPTION, None),
        ("model", _add_model_arguments, model, validate_model, _MODEL_DESCRIPTION, None),
    ]
    for name, add_arguments, handler, validate, description, epilog in specs:
        sp = sub.add_parser(name, help=COMMANDS[name], description=description, epilog=epilog,
                            formatter_class=_HelpFormatter)
        add_arguments(sp)
        sp.set_defaults(handler=handler, validate=validate, parser=sp)
    return p


COLUMNS = [("size_bytes", "{:>11d}"), ("count", "{:>10d}"), ("density", "{:>8.0e}"), ("algorithm", "{:<36s}"),
           ("time_min_us", "{:>11.1f}"), ("time_avg_us", "{:>11.1f}"), ("time_max_us", "{:>11.1f}"),
           ("time_median_us", "{:>11.1f}"), ("algbw_GBps", "{:>8.3f}"), ("busbw_GBps", "{:>8.3f}"),
           ("bytes_sent_per_rank", "{:>12d}"), ("speedup_vs_mpi", "{:>8.2f}"), ("rel_error", "{:>9.1e}"),
           ("max_rel_error", "{:>9.1e}"), ("wrong", "{:>6d}")]


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
    return "  ".join(fmt.format(row[key]) if row.get(key) is not None else "N/A".rjust(len(fmt.format(0)))
                     for key, fmt in COLUMNS)


def header() -> str:
    """The table's header line.

    Returns
    -------
    str
        One name per column of :data:`COLUMNS`, as wide as the column.
    """
    widths = [len(fmt.format(0 if "d}" in fmt or "f}" in fmt or "e}" in fmt else "")) for _, fmt in COLUMNS]
    names = ["size(B)", "count", "density", "algorithm", "min(us)", "avg(us)", "max(us)", "med(us)", "algbw", "busbw",
             "sent(B)/rank", "speedup", "rel.err", "max.err", "#wrong"]
    return "  ".join(name.rjust(w) if i != 3 else name.ljust(w) for i, (name, w) in enumerate(zip(names, widths)))


# ---- validation ----------------------------------------------------------------------------

def _positive(values: Sequence[float], flag: str, what: str) -> str | None:
    bad = next((v for v in values if not v >= 1), None)
    return None if bad is None else f"argument {flag}: {what} must be positive, not {bad}"


def _densities(values: Sequence[float], flag: str = "--density") -> str | None:
    bad = next((d for d in values if not 0 < d <= 1), None)  # also NaN
    return None if bad is None else f"argument {flag}: a density must be in (0, 1], not {bad:g}"


def resolve_methods(methods: Sequence[str], compression: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The methods of a sweep, registered: ``--methods`` (``all``: :data:`BUILTIN`) then ``--compression``
    (``all``: :data:`DEFAULT_COMPRESSION`), without duplicates.

    Parameters
    ----------
    methods : Sequence[str]
        ``--methods``: ``all``, names of :data:`METHODS` or compression names.
    compression : Sequence[str]
        ``--compression``: ``all`` or names of :data:`COMPRESSION_NAMES`.

    Returns
    -------
    names : list[str]
        The methods to time, in order (the baseline among them or not: it always runs first).
    skipped : list of (str, str)
        Known methods this installation cannot run, with the reason.

    Raises
    ------
    ValueError
        Unknown names; the message lists them and what is known.
    """
    chosen = list(BUILTIN) if "all" in methods else list(methods)
    names = [n for name in compression for n in (DEFAULT_COMPRESSION if name == "all" else [name])]
    unknown_methods, unknown_names, skipped = [], [], []
    for name in [m for m in chosen if m not in METHODS] + names:
        try:
            register_compression(name)
        except ValueError:
            (unknown_names if name in names else unknown_methods).append(name)
        except MethodUnavailable as exc:
            skipped.append((name, str(exc)))
    problems = []
    if unknown_methods:
        problems.append(f"unknown method(s) {', '.join(map(repr, unknown_methods))} (argument --methods); known: "
                        f"all, {', '.join(sorted(BUILTIN))} and the --compression names")
    if unknown_names:
        problems.append(f"unknown compression {', '.join(map(repr, unknown_names))} (argument --compression); "
                        f"names: {COMPRESSION_NAMES}")
    if problems:
        raise ValueError("; ".join(problems))
    return list(dict.fromkeys(m for m in chosen + names if m in METHODS)), skipped


def validate_run(args: argparse.Namespace) -> str | None:
    """Check the values of the sweep's arguments (the same verdict on every rank: no file system access).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`build_parser` or the ``run`` subcommand.

    Returns
    -------
    str or None
        The first problem, as an argparse error message, or None.
    """
    if args.n is not None:
        if error := _positive(args.n, "--n", "an element count"):
            return error
    else:
        if error := _positive([args.min_bytes], "-b/--minbytes", "the smallest size"):
            return error
        if error := _positive([args.max_bytes], "-e/--maxbytes", "the largest size"):
            return error
        if args.min_bytes > args.max_bytes:
            return (f"argument -b/--minbytes: {args.min_bytes} B is larger than -e/--maxbytes {args.max_bytes} B: "
                    "no size to run")
        if args.stepbytes is not None:
            if error := _positive([args.stepbytes], "--stepbytes", "the size increment"):
                return error
            cases = (args.max_bytes - args.min_bytes) // args.stepbytes + 1
        elif args.step_factor < 2:
            return f"argument -f/--stepfactor: must be at least 2, not {args.step_factor}"
        else:
            cases = math.floor(math.log(args.max_bytes / args.min_bytes, args.step_factor) + 1e-9) + 1
        if cases > MAX_CASES:
            return f"argument --stepbytes: {cases} sizes from -b to -e; at most {MAX_CASES}"
    if error := _densities(args.density):
        return error
    if args.iterations < 1:
        return f"argument -n/--iters: must be at least 1, not {args.iterations}"
    if args.warmup < 0:
        return f"argument -w/--warmup_iters: must be at least 0, not {args.warmup}"
    if args.seed < 0:
        return f"argument --seed: must be at least 0, not {args.seed}"
    try:
        resolve_methods(args.methods, args.compression)
    except ValueError as exc:
        return str(exc)
    return None


def validate_calibrate(args: argparse.Namespace) -> str | None:
    """Check the values of ``calibrate``'s arguments and that it runs on at least 2 ranks.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`build_calibrate_parser` or the ``calibrate`` subcommand.

    Returns
    -------
    str or None
        The first problem, as an argparse error message, or None.
    """
    if error := _positive([args.max_bytes], "-e/--maxbytes", "the largest message"):
        return error
    if args.iterations < 1:
        return f"argument -n/--iters: must be at least 1, not {args.iterations}"
    if MPI.COMM_WORLD.Get_size() < 2:
        return "needs at least 2 ranks (run it under mpiexec -n 2)"
    return None


def validate_model(args: argparse.Namespace) -> str | None:
    """Check the values of ``model``'s arguments.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`build_model_parser` or the ``model`` subcommand.

    Returns
    -------
    str or None
        The first problem, as an argparse error message, or None.
    """
    if error := _positive(args.n, "--n", "an element count") or _positive(args.ranks, "--ranks", "a number of ranks"):
        return error
    if error := _densities(args.density):
        return error
    if args.bits and any(not 0 < b <= 64 for b in args.bits):
        return f"argument --bits: must be in (0, 64], not {next(b for b in args.bits if not 0 < b <= 64):g}"
    for name in ("alpha", "gamma", "delta"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            return f"argument --{name}: must be at least 0, not {value:g}"
    if args.beta is not None and not args.beta > 0:
        return f"argument --beta: must be positive, not {args.beta:g}"
    for spec in args.compression:
        try:
            make_format(spec, 0)
        except ValueError as exc:
            return f"argument --compression: {exc}"
    return None


def check_output_path(path: Path, flag: str, make_parents: bool = False) -> str | None:
    """Whether a file can be written there, found out now rather than after the sweep.

    Opens the file for appending (which leaves an existing file as it is) and removes it again if it did not
    exist; with ``make_parents``, missing directories are fine where the nearest existing one is writable.

    Parameters
    ----------
    path : pathlib.Path
        The file an option names.
    flag : str
        The option, for the message.
    make_parents : bool
        The writer creates missing parent directories.

    Returns
    -------
    str or None
        The problem, as an argparse error message, or None.
    """
    if path.is_dir():
        return f"argument {flag}: {path} is a directory"
    parent = path.parent
    if not parent.is_dir():
        if not make_parents:
            return f"argument {flag}: cannot write {path}: directory {parent} does not exist"
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            return f"argument {flag}: cannot create the directories of {path} under {parent}"
        return None
    existed = path.exists()
    try:
        with path.open("a"):
            pass
    except OSError as exc:
        return f"argument {flag}: cannot write {path}: {exc.strerror or exc}"
    if not existed:
        path.unlink(missing_ok=True)
    return None


def _check_plot(path: Path) -> str | None:
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return f"argument --plot: needs matplotlib (pip install matplotlib) to write {path}"
    suffix = path.suffix[1:].lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix and suffix not in formats:
        return f"argument --plot: matplotlib cannot write .{suffix} files; use one of {', '.join(sorted(formats))}"
    return None


def check_outputs(args: argparse.Namespace) -> str | None:
    """Check every output file of the parsed command line (rank 0 does; :func:`main` broadcasts the verdict).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`build_main_parser`.

    Returns
    -------
    str or None
        The first problem, as an argparse error message, or None.
    """
    command = getattr(args, "command", "run")
    if command == "calibrate":
        if args.no_save or args.output is None:
            return None
        return check_output_path(args.output, "--output", make_parents=True)
    checks = [("--json", args.json)] + ([("--csv", args.csv), ("--plot", args.plot)] if command == "run" else [])
    for flag, path in checks:
        if path is not None and (error := check_output_path(path, flag)):
            return error
    if command == "run" and args.plot is not None:
        return _check_plot(args.plot)
    return None


def _check_outputs_safely(args: argparse.Namespace) -> str | None:
    """:func:`check_outputs`, any failure of it a message: the other ranks wait for rank 0's verdict."""
    try:
        return check_outputs(args)
    except Exception as exc:  # noqa: BLE001 (e.g. a PermissionError of Path.exists)
        return f"cannot check the output files: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scaleml-bench`` and ``python -m scaleml.bench``.

    Parameters
    ----------
    argv : Sequence[str], optional
        Arguments without the program name (default: ``sys.argv[1:]``); a first ``run``, ``calibrate`` or
        ``model`` selects that subcommand, and anything else is ``run``'s (the sweep's) options.

    Returns
    -------
    int
        Exit status: 0; 2 for a usage error (every rank; rank 0 alone prints it, before any measurement);
        1 when ``-c 1`` found a wrong result.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_main_parser()
    words = argv if argv and (argv[0] in COMMANDS or argv[0] in ("-h", "--help", "--version")) else ["run", *argv]
    try:
        args = parser.parse_args(words)  # `scaleml-bench -h` and `--version` exit here
        error = args.validate(args)
        if error is None:
            # Files are rank 0's to write: it checks them, and every rank learns the verdict (no rank waits).
            comm = MPI.COMM_WORLD
            error = comm.bcast(_check_outputs_safely(args) if comm.Get_rank() == 0 else None, root=0)
        if error is not None:
            args.parser.error(error)
    except SystemExit as exc:  # argparse's exit: help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.argv = [PROG, *argv]
    return args.handler(args)


class _Progress:
    """Rank 0's progress on stderr: a tqdm bar on a terminal, else one ``#`` line per case; or nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.bar, self.start = total, 0, None, time.perf_counter()
        self.enabled = enabled
        self.emit: Callable[[str], None] = print
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=PROG, unit="case", file=sys.stderr, leave=False)
                self.emit = self.bar.write  # rows go through the bar so they do not tear it
            except ImportError:  # progress bars are optional: lines instead
                pass

    def update(self, size_bytes: int, density: float) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif self.enabled:
            print(f"# [{self.done}/{self.total}] {format_size(size_bytes)}, density {density:g} done, "
                  f"{time.perf_counter() - self.start:.1f} s elapsed", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    """The sweep: every case, every method, one row each; then the summary lines and the files.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`build_parser` (or ``run`` of :func:`build_main_parser`) and checked by
        :func:`validate_run` (:func:`main` does both).

    Returns
    -------
    int
        0, or 1 when ``-c 1`` found a lossless result off the exact sum.
    """
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    methods, skipped = resolve_methods(args.methods, args.compression)
    for name in [m for m in methods if m in SETUP]:
        try:
            SETUP[name](comm)  # collective, and it fails on every rank alike
        except MethodUnavailable as exc:
            skipped.append((name, str(exc)))
            methods.remove(name)
    if rank == 0:
        for name, reason in skipped:
            print(f"{PROG}: skipping {name}: {reason}", file=sys.stderr)
    dtype = np.dtype(args.dtype)
    check = getattr(args, "check", 1)
    cases = [(n, d) for n in sizes_from(args, dtype.itemsize) for d in args.density]
    meta = run_metadata(comm)
    meta.update({"schema_version": SCHEMA_VERSION, "argv": list(getattr(args, "argv", None) or [PROG]),
                 "dtype": dtype.name, "pattern": args.pattern, "seed": args.seed, "warmup": args.warmup,
                 "iterations": args.iterations, "check": check})
    if rank == 0 and not args.quiet:
        print(f"# {PROG}: {meta['ranks']} ranks on {meta['hosts']} host(s), {dtype.name}, pattern "
              f"{args.pattern}, warmup {args.warmup}, iterations {args.iterations}, seed {args.seed}, "
              f"check {check}, commit {meta['commit']}")
        print(f"# {meta['mpi']}")
        print("# time in us; algbw, busbw in GB/s (busbw = algbw x 2(P-1)/P for AllReduce, (P-1)/P with P x "
              "the size for allgather:*)")
        if "dropin" in methods and any(d < 1 for d in args.density):
            print("# input: dropin gets the dense vector, as a user's Allreduce does, and reads all of it to find "
                  "the non-zeros; the rows but MPI's get them as (index, value) pairs")
        print(header(), flush=True)
    progress_wanted = getattr(args, "progress", None)
    progress = _Progress(len(cases), rank == 0 and (progress_wanted if progress_wanted is not None
                                                    else len(cases) > 1))
    rows = []
    for n, density in cases:
        case_rows = run_case(comm, n, dtype, density, args.pattern, methods, args.warmup, args.iterations, args.seed)
        rows.extend(case_rows)
        if rank == 0 and not args.quiet:
            for row in case_rows:
                progress.emit(format_row(row))
            sys.stdout.flush()
        progress.update(n * dtype.itemsize, density)
    progress.close()
    # The rows are the same on every rank: so is the verdict (no rank waits for rank 0's files).
    wrong = [r for r in rows if check and r["wrong"]]
    out_of_bounds = sum(r["wrong"] for r in wrong)
    if rank == 0:
        for r in wrong:
            print(f"{PROG}: wrong result: {r['method']} at {r['size_bytes']} B, density {r['density']:g}: "
                  f"{r['wrong']} of {r['count']} values off the exact sum (max.err {r['max_rel_error']:.1e})",
                  file=sys.stderr)
        if not args.quiet:
            if check:
                print(f"# Out of bounds values : {out_of_bounds} {'FAILED' if wrong else 'OK'}")
            for method, busbw in average_bus_bandwidth(rows).items():
                print(f"# Avg bus bandwidth    : {busbw:.4f} GB/s {method}")
            sys.stdout.flush()
        if args.json:
            args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        if args.csv:
            with args.csv.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
                writer.writeheader()
                writer.writerows(rows)
        if args.plot:
            plot(rows, meta, args.plot)
    return 1 if wrong else 0


def average_bus_bandwidth(rows: list[dict]) -> dict[str, float]:
    """Mean bus bandwidth over a sweep's rows, per method (nccl-tests' ``# Avg bus bandwidth``).

    Parameters
    ----------
    rows : list[dict]
        Rows of :func:`scaleml.bench.measure.run_case`.

    Returns
    -------
    dict[str, float]
        ``{method: mean busbw_GBps}``, methods in the order of their first row.
    """
    per_method: dict[str, list[float]] = {}
    for row in rows:
        per_method.setdefault(row["method"], []).append(row["busbw_GBps"])
    return {method: float(np.mean(values)) for method, values in per_method.items()}


def _size_ticks(ax, sizes: Sequence[int]) -> None:  # noqa: ANN001 (a matplotlib Axes)
    """Log-scale x axis in binary units: a tick at every power of 2 the sizes span (thinned to about 8)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    lo, hi = int(math.floor(math.log2(min(sizes)))), int(math.ceil(math.log2(max(sizes))))
    step = max(1, math.ceil((hi - lo + 1) / 8))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator([2.0 ** e for e in range(lo, hi + 1, step)]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_size(x).replace(".0 ", " ")))


def plot(rows: list[dict], meta: dict, path: Path) -> None:
    """Time vs size, one line per (method, density), and speedup vs density at the largest size.

    Colours tell methods apart, line styles and markers densities; the size axis is logarithmic in binary
    units (B, KiB, MiB, GiB).

    Parameters
    ----------
    rows : list[dict]
        Rows of :func:`scaleml.bench.measure.run_case`.
    meta : dict
        :func:`scaleml.bench.measure.run_metadata` (ranks, hosts, commit and date go in the title).
    path : pathlib.Path
        The file to write; matplotlib picks the format by its suffix (PNG without one).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_speed) = plt.subplots(1, 2, figsize=(14, 5.5))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    densities = sorted({r["density"] for r in rows})
    sizes = sorted({r["size_bytes"] for r in rows})
    largest = sizes[-1]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "v", "D", "x", "+", "*"]
    for i, m in enumerate(methods):
        colour = colours[i % len(colours)]
        for j, d in enumerate(densities):
            sel = sorted((r for r in rows if r["method"] == m and r["density"] == d), key=lambda r: r["size_bytes"])
            if sel:
                ax_time.plot([r["size_bytes"] for r in sel], [r["time_avg_us"] for r in sel], color=colour,
                             linestyle=styles[j % len(styles)], marker=markers[j % len(markers)], markersize=4,
                             label=f"{m}, density {d:g}" if len(densities) > 1 else m)
        sel = sorted((r for r in rows if r["method"] == m and r["size_bytes"] == largest), key=lambda r: r["density"])
        ax_speed.plot([r["density"] for r in sel], [r["speedup_vs_mpi"] for r in sel], color=colour, marker="o",
                      label=m)
    ax_time.set(yscale="log", xlabel="message size (dense vector per rank)", ylabel="time per call (us)",
                title="time vs size" + (f", density {densities[0]:g}" if len(densities) == 1 else ""))
    _size_ticks(ax_time, sizes)
    ax_speed.set(xscale="log", yscale="log", xlabel="density (non-zeros / n per rank)",
                 ylabel="speedup over MPI_Allreduce", title=f"speedup vs density, {format_size(largest)}")
    ax_speed.axhline(1.0, color="gray", lw=0.8)
    for ax in (ax_time, ax_speed):
        ax.grid(True, which="both", alpha=0.3)
    ax_time.legend(fontsize=7, ncol=2 if len(methods) * len(densities) > 12 else 1)
    ax_speed.legend(fontsize=7)
    fig.suptitle(f"{PROG}: {meta['ranks']} ranks on {meta['hosts']} host(s), commit {meta['commit']}, "
                 f"{meta['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
