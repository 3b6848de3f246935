"""``scaleml-bench``: micro-benchmark of ScaleML's collectives against ``MPI_Allreduce``.

Run under ``mpiexec``/``srun``; rank 0 prints one row per case::

    mpiexec -n 4 scaleml-bench --n 4194304 --density 0.01
    mpiexec -n 4 python -m scaleml.bench -b 4K -e 64M -f 4 --density 1e-3 1e-2 --json out.json --plot out.png
    mpiexec -n 2 scaleml-bench calibrate        # measure alpha, beta, gamma; auto uses them from then on
    scaleml-bench model --n 4194304 --ranks 4 64 1024 --density 1e-3 1e-2 1e-1

Conventions follow nccl-tests and the OSU benchmarks: sizes in bytes of the
dense vector (``-b``/``-e``/``-f``), warm-up then timed iterations, each
iteration fenced by a barrier, time = per-rank average over iterations
reported as min/avg/max over ranks, ``algbw = bytes / time`` and
``busbw = algbw * 2(P-1)/P``. Every method runs on the same data in the same
run as the ``MPI_Allreduce`` baseline, and its speedup is the ratio of the two
average times. The error column is the largest deviation from the exact
(float64) sum, relative to the largest magnitude of that sum.

A method is one registration (:func:`register`): a function that receives the
case and returns a callable performing one collective and returning the dense
result, the bytes this rank sent and the algorithm that ran.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from mpi4py import MPI

from . import compress, cost_model
from ._native import lib
from .comm import Comm
from .datagen import PATTERNS, random_sparse
from .sparse import index_dtype, sparse_allreduce


@dataclass
class Case:
    """One benchmark case as every rank sees it."""

    comm: MPI.Intracomm
    n: int
    dtype: np.dtype
    density: float
    pattern: str
    indices: np.ndarray
    values: np.ndarray
    dense: np.ndarray  # the same vector, dense


Runner = Callable[[], "tuple[np.ndarray, int, str]"]
METHODS: dict[str, Callable[[Case], Runner]] = {}
LOSSLESS: set[str] = set()


def register(name: str, lossless: bool = True) -> Callable[[Callable[[Case], Runner]], Callable[[Case], Runner]]:
    """Register a benchmark method: ``factory(case) -> run``, ``run() -> (dense result, bytes sent, algorithm)``."""

    def wrap(factory: Callable[[Case], Runner]) -> Callable[[Case], Runner]:
        METHODS[name] = factory
        if lossless:
            LOSSLESS.add(name)
        return factory

    return wrap


BASELINE = "mpi_allreduce"


@register(BASELINE)
def _mpi_allreduce(case: Case) -> Runner:
    out = np.empty_like(case.dense)
    P = case.comm.Get_size()
    ring_bytes = 2 * (P - 1) * case.dense.nbytes // P  # MPI does not report its traffic

    def run():
        case.comm.Allreduce(case.dense, out, MPI.SUM)
        return out, ring_bytes, BASELINE

    return run


def _sparse_method(algorithm: str) -> Callable[[Case], Runner]:
    def factory(case: Case) -> Runner:
        def run():
            result, info = sparse_allreduce(case.indices, case.values, case.n, case.comm, algorithm,
                                            return_info=True)
            return result, info.bytes_sent, info.algorithm

        return run

    return factory


for _alg in ("auto", *cost_model.ALGORITHMS):
    register(_alg)(_sparse_method(_alg))


@register("dropin")
def _dropin(case: Case) -> Runner:
    """scaleml.Comm.Allreduce on the dense buffer: sparsity detection included."""
    comm = Comm(case.comm)
    out = np.empty_like(case.dense)

    def run():
        comm.Allreduce(case.dense, out, MPI.SUM)
        info = comm.last_info
        return out, info.bytes_sent if info else 0, info.algorithm if info else BASELINE

    return run


# ---- compressed methods (lossy): --compression NAME ... -----------------------------------

def _allgather_compressed(make: Callable[[Case], compress.Compressor], name: str) -> Callable[[Case], Runner]:
    """Each rank compresses its dense vector, the messages are allgathered, every rank decodes and sums."""

    def factory(case: Case) -> Runner:
        compressor = make(case)
        comm, P = case.comm, case.comm.Get_size()

        def run():
            message = compressor.encode(case.dense)
            sizes = comm.allgather(message.nbytes)
            displs = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(int)
            gathered = np.empty(int(sum(sizes)), np.uint8)
            comm.Allgatherv(message.buffer, [gathered, (sizes, displs), MPI.BYTE])
            total = np.zeros(case.n, case.dtype)
            part = np.empty(case.n, case.dtype)
            for j in range(P):
                total += compress.decode(gathered[displs[j]:displs[j] + sizes[j]], out=part)
            ring_bytes = sum(sizes) - sizes[(comm.Get_rank() + 1) % P]  # a ring allgather's share
            return total, ring_bytes, name

        return run

    return factory


def _topk_sparse(ratio: float, name: str) -> Callable[[Case], Runner]:
    """TopK of each rank's dense vector, summed by the sparse AllReduce (auto)."""

    def factory(case: Case) -> Runner:
        topk = compress.TopK(ratio=ratio)

        def run():
            idx, vals = compress.TopK.entries(topk.encode(case.dense))
            result, info = sparse_allreduce(idx, vals, case.n, case.comm, "auto", return_info=True)
            return result, info.bytes_sent, info.algorithm

        return run

    return factory


def register_compression(name: str) -> str:
    """Register the lossy method NAME: qsgdB (B = 1..8 bits, max norm, buckets of 512), onebit, fp16, bf16,
    or topkR (R a ratio such as 0.01, then the sparse AllReduce)."""
    if name in METHODS:
        return name
    if m := re.fullmatch(r"qsgd([1-8])", name):
        bits = int(m.group(1))
        factory = _allgather_compressed(
            lambda case: compress.QSGD(bits=bits, bucket=512, norm="max", rank=case.comm.Get_rank()), name)
    elif name == "onebit":
        factory = _allgather_compressed(lambda case: compress.OneBit(bucket=512, rank=case.comm.Get_rank()), name)
    elif name in ("fp16", "bf16"):
        factory = _allgather_compressed(lambda case: compress.Cast(name, rank=case.comm.Get_rank()), name)
    elif (m := re.fullmatch(r"topk(0?\.\d+|1(\.0*)?)", name)) and 0 < float(m.group(1)) <= 1:
        factory = _topk_sparse(float(m.group(1)), name)
    else:
        raise ValueError(f"unknown compression {name!r}: use qsgd1..qsgd8, onebit, fp16, bf16 or topkR (0 < R <= 1)")
    register(name, lossless=False)(factory)
    return name


# ---- measurement ---------------------------------------------------------------------------

def measure(run: Runner, comm: MPI.Intracomm, warmup: int, iterations: int) -> tuple[float, np.ndarray, int, str]:
    """(this rank's average seconds per call, last result, average bytes sent, algorithm)."""
    for _ in range(warmup):
        run()
    total, sent = 0.0, 0
    result, algorithm = None, ""
    for _ in range(max(iterations, 1)):
        comm.Barrier()
        t0 = time.perf_counter()
        result, nbytes, algorithm = run()
        total += time.perf_counter() - t0
        sent += nbytes
    return total / max(iterations, 1), result, sent // max(iterations, 1), algorithm


def run_case(comm: MPI.Intracomm, n: int, dtype: np.dtype, density: float, pattern: str, methods: Sequence[str],
             warmup: int, iterations: int, seed: int) -> list[dict]:
    """Run every method on one input; return rows (meaningful on every rank)."""
    P, rank = comm.Get_size(), comm.Get_rank()
    idx, vals = random_sparse(n, density, pattern, dtype, rank, P, seed)
    dense = np.zeros(n, dtype)
    dense[idx] = vals
    case = Case(comm, n, np.dtype(dtype), density, pattern, idx, vals, dense)
    exact = np.empty(n)
    comm.Allreduce(dense.astype(np.float64), exact, MPI.SUM)
    scale = float(np.abs(exact).max()) if n else 0.0
    nnz = comm.allreduce(int(idx.size), MPI.SUM)
    nnz_max = comm.allreduce(int(idx.size), MPI.MAX)
    rows, baseline_avg = [], None
    for name in [BASELINE, *[m for m in methods if m != BASELINE]]:
        run = METHODS[name](case)
        t, result, sent, ran = measure(run, comm, warmup, iterations)
        err = float(np.abs(result.astype(np.float64) - exact).max()) / scale if n and scale else 0.0
        times = comm.allgather(t)
        err = comm.allreduce(err, MPI.MAX)
        sent = comm.allreduce(sent, MPI.SUM) // P
        algorithm = name if ran == name else f"{name}->{ran}"  # what auto and dropin picked
        t_avg = float(np.mean(times))
        if name == BASELINE:
            baseline_avg = t_avg
        size = n * case.dtype.itemsize
        algbw = size / t_avg / 1e9 if t_avg > 0 else 0.0
        rows.append({
            "size_bytes": size, "count": n, "dtype": case.dtype.name, "ranks": P, "density": density,
            "global_nnz_input": nnz, "max_nnz_input": nnz_max, "pattern": pattern, "method": name,
            "algorithm": algorithm,
            "time_min_us": min(times) * 1e6, "time_avg_us": t_avg * 1e6, "time_max_us": max(times) * 1e6,
            "algbw_GBps": algbw, "busbw_GBps": algbw * 2 * (P - 1) / P, "bytes_sent_per_rank": sent,
            "speedup_vs_mpi": baseline_avg / t_avg if t_avg > 0 else float("inf"),
            "max_rel_error": err, "lossless": name in LOSSLESS,
        })
    return rows


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
    p = argparse.ArgumentParser(prog="scaleml-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", help="element counts (instead of -b/-e/-f)")
    p.add_argument("-b", "--min-bytes", type=parse_size, default=parse_size("4K"), help="smallest size")
    p.add_argument("-e", "--max-bytes", type=parse_size, default=parse_size("16M"), help="largest size")
    p.add_argument("-f", "--step-factor", type=int, default=4, help="size multiplier between cases")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--density", type=float, nargs="+", default=[0.01], help="fractions of non-zeros per rank")
    p.add_argument("--pattern", choices=PATTERNS, default="overlap", help="how ranks' indices relate")
    p.add_argument("--methods", nargs="+", default=["all"],
                   help=f"lossless methods to time besides {BASELINE}: all or any of {sorted(METHODS)}")
    p.add_argument("--compression", nargs="+", default=[], metavar="NAME",
                   help="lossy methods to add: qsgd1..qsgd8 (QSGD, max norm, buckets of 512, allgather), onebit, "
                   "fp16, bf16 (allgather), topkR (TopK with ratio R, e.g. topk0.01, then the sparse AllReduce)")
    p.add_argument("-w", "--warmup", type=int, default=5)
    p.add_argument("-i", "--iterations", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write rows and run metadata as JSON")
    p.add_argument("--csv", type=Path, help="write rows as CSV")
    p.add_argument("--plot", type=Path, help="write a PNG: time vs size, and speedup vs density (matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    return p


def build_calibrate_parser() -> argparse.ArgumentParser:
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
    p = argparse.ArgumentParser(prog="scaleml-bench model", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Predicted time of every algorithm from the cost model auto uses.")
    p.add_argument("--n", type=int, nargs="+", default=[1 << 22], help="element counts")
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 64, 1024], help="numbers of ranks")
    p.add_argument("--density", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1], help="non-zeros per rank / n")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--bits", type=float, nargs="+",
                   help="bits per value on the wire, e.g. 8 4 for QSGD-quantized values (default: the dtype's width); "
                   "indices keep their 32/64 bits")
    p.add_argument("--alpha", type=float, help="seconds per message (default: the saved/current parameters)")
    p.add_argument("--beta", type=float, help="seconds per byte")
    p.add_argument("--gamma", type=float, help="seconds per byte of local work")
    p.add_argument("--json", type=Path, help="write the predictions as JSON")
    return p


COLUMNS = [("size_bytes", "{:>11d}"), ("count", "{:>10d}"), ("density", "{:>8.0e}"), ("algorithm", "{:<32s}"),
           ("time_min_us", "{:>11.1f}"), ("time_avg_us", "{:>11.1f}"), ("time_max_us", "{:>11.1f}"),
           ("algbw_GBps", "{:>8.3f}"), ("busbw_GBps", "{:>8.3f}"), ("bytes_sent_per_rank", "{:>12d}"),
           ("speedup_vs_mpi", "{:>8.2f}"), ("max_rel_error", "{:>9.1e}")]


def format_row(row: dict) -> str:
    return "  ".join(fmt.format(row[key]) for key, fmt in COLUMNS)


def header() -> str:
    widths = [len(fmt.format(0 if "d}" in fmt or "f}" in fmt or "e}" in fmt else "")) for _, fmt in COLUMNS]
    names = ["size(B)", "count", "density", "algorithm", "min(us)", "avg(us)", "max(us)", "algbw", "busbw",
             "sent(B)/rank", "speedup", "rel.err"]
    return "  ".join(name.rjust(w) if i != 3 else name.ljust(w) for i, (name, w) in enumerate(zip(names, widths)))


def run_metadata(comm: MPI.Intracomm, collective: bool = True) -> dict:
    """Which machine, commit and MPI produced the numbers (``collective``: count hosts)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "ranks": comm.Get_size(),
            "hosts": len(set(comm.allgather(MPI.Get_processor_name()))) if collective else None,
            "machine": platform.node(),
            "cpu": platform.processor() or platform.machine(), "commit": commit,
            "mpi": MPI.Get_library_version().splitlines()[0].strip(),
            "cost_params": asdict(cost_model.get_params())}


def main(argv: Sequence[str] | None = None) -> int:
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
    methods = sorted(LOSSLESS, key=list(METHODS).index) if "all" in args.methods else args.methods
    try:
        methods += [register_compression(name) for name in args.compression]
    except ValueError as exc:
        if rank == 0:
            print(f"scaleml-bench: {exc}", file=sys.stderr)
        return 2
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        if rank == 0:
            print(f"scaleml-bench: unknown method(s) {unknown}; known: {sorted(METHODS)}", file=sys.stderr)
        return 2
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


def calibrate(args: argparse.Namespace) -> int:
    """Ping-pong between rank 0 and the last rank, fit alpha and beta; time a local add for gamma."""
    comm = MPI.COMM_WORLD
    rank, P = comm.Get_rank(), comm.Get_size()
    if P < 2:
        if rank == 0:
            print("scaleml-bench calibrate: needs at least 2 ranks (run it under mpiexec -n 2)", file=sys.stderr)
        return 2
    peer = P - 1
    sizes = [0] + [1 << e for e in range(0, args.max_bytes.bit_length()) if (1 << e) <= args.max_bytes]
    samples = []
    for size in sizes:
        buf = np.zeros(max(size, 1), np.uint8)
        reps = max(3, min(args.iterations, int(args.iterations * 65536 / max(size, 65536))))
        best = float("inf")
        comm.Barrier()
        for _ in range(reps + 1):  # the first round trip is a warm-up
            t0 = time.perf_counter()
            if rank == 0:
                comm.Send([buf, size, MPI.BYTE], dest=peer, tag=7)
                comm.Recv([buf, size, MPI.BYTE], source=peer, tag=7)
            elif rank == peer:
                comm.Recv([buf, size, MPI.BYTE], source=0, tag=7)
                comm.Send([buf, size, MPI.BYTE], dest=0, tag=7)
            best = min(best, (time.perf_counter() - t0) / 2)
        samples.append((size, best))
    samples = comm.bcast(samples, root=0)
    m = np.array([s for s, _ in samples], float)
    t = np.array([x for _, x in samples], float)
    alpha, beta_link = fit_alpha_beta(m, t)
    # Collectives keep every rank busy at once: alpha and beta under load are what they see.
    alpha_link = alpha
    alpha = max(alpha_link, alpha_under_load(comm))
    beta = max(beta_under_load(comm, args.max_bytes), beta_link)
    # gamma: the C merge itself, on every rank at once (ranks may share cores).
    comm.Barrier()
    gamma = comm.allreduce(float(lib.scaleml_merge_seconds_per_byte(1 << 20, 5)), MPI.MAX)
    fitted = (m <= 1024) | (m >= 65536)
    fit_error = float(np.max(np.abs((alpha_link + beta_link * m[fitted]) - t[fitted]) / t[fitted]))
    if rank == 0:
        print(f"alpha = {alpha * 1e6:.2f} us (ping-pong: {alpha_link * 1e6:.2f} us)   "
              f"beta = {beta * 1e9:.4f} ns/B ({1e-9 / beta:.3f} GB/s; one link alone: {1e-9 / beta_link:.3f} GB/s)   "
              f"gamma = {gamma * 1e9:.4f} ns/B (sparse merge)\n"
              f"ping-pong fit: worst relative error {fit_error:.0%} at <= 1 KiB and >= 64 KiB, ranks 0 <-> {peer}")
        for size, x in samples:
            fitted_us = (alpha_link + beta_link * size) * 1e6
            print(f"  {size:>10d} B  {x * 1e6:12.2f} us   ping-pong fit {fitted_us:12.2f} us")
        if not args.no_save:
            path = args.output or cost_model.calibration_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"alpha": alpha, "beta": beta, "gamma": gamma, "alpha_ping_pong": alpha_link,
                                        "beta_one_link": beta_link,
                                        "fit_max_rel_error": fit_error,
                                        "samples": samples, **run_metadata(comm, collective=False)}, indent=1))
            print(f"saved to {path} (read by algorithm='auto' at import; SCALEML_COST_FILE overrides the path)")
    return 0


def alpha_under_load(comm: MPI.Intracomm, rounds: int = 200) -> float:
    """Median seconds of one round of 8-byte pairwise exchanges in which every rank takes part.

    Recursive-doubling partners, as the collectives use them; where ranks share
    cores or the network is busy this is far above the ping-pong latency.
    """
    rank, P = comm.Get_rank(), comm.Get_size()
    p2 = 1 << (P.bit_length() - 1)
    send, recv = np.zeros(8, np.uint8), np.zeros(8, np.uint8)
    times = []
    comm.Barrier()
    for i in range(rounds):
        mask = 1 << (i % max(p2.bit_length() - 1, 1))
        partner = rank ^ mask if rank < p2 and (rank ^ mask) < p2 else MPI.PROC_NULL
        t0 = time.perf_counter()
        comm.Sendrecv(send, partner, 8, recv, partner, 8)
        times.append(time.perf_counter() - t0)
    return comm.allreduce(float(np.median(times)), MPI.MAX)


def beta_under_load(comm: MPI.Intracomm, max_bytes: int) -> float:
    """Seconds per byte when every rank exchanges max_bytes with a partner at the same time."""
    rank, P = comm.Get_rank(), comm.Get_size()
    partner = rank ^ 1 if (rank ^ 1) < P else MPI.PROC_NULL  # the odd one out of an odd P idles
    send = np.zeros(max_bytes, np.uint8)
    recv = np.zeros_like(send)
    best = float("inf")
    for _ in range(4):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Sendrecv(send, partner, 9, recv, partner, 9)
        best = min(best, time.perf_counter() - t0)
    return comm.allreduce(best, MPI.MAX) / max_bytes


def fit_alpha_beta(m: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Hockney fit of t = alpha + beta*m: alpha from the small messages, beta from the large ones.

    beta is the least-squares slope of (t - alpha) over the messages of at
    least 64 KiB (or the largest quarter when the sweep stops below that), where
    bandwidth, not latency or a shaper's burst allowance, sets the time; alpha
    is the median of (t - beta*m) over the messages up to 1 KiB. Two rounds,
    starting from alpha = median small-message time.
    """
    small = m <= 1024 if (m <= 1024).any() else m <= m.min()
    big = m >= 65536 if (m >= 65536).sum() >= 2 else m >= np.quantile(m, 0.75)
    x = m[big]
    alpha, beta = float(np.median(t[small])), 0.0
    for _ in range(2):
        beta = float(np.dot(x, t[big] - alpha) / np.dot(x, x)) if np.dot(x, x) > 0 else 0.0
        alpha = float(np.median(t[small] - beta * m[small]))
    return max(alpha, 0.0), max(beta, 1e-15)


def model(args: argparse.Namespace) -> int:
    """Predictions of every algorithm, and the choice of auto."""
    params = cost_model.get_params()
    overrides = {k: getattr(args, k) for k in ("alpha", "beta", "gamma") if getattr(args, k) is not None}
    params = cost_model.CostParams(**{**asdict(params), **overrides})
    itemsize = np.dtype(args.dtype).itemsize
    bits_list = args.bits or [8.0 * itemsize]
    if any(not 0 < b <= 64 for b in bits_list):
        print("scaleml-bench model: --bits must be in (0, 64]", file=sys.stderr)
        return 2
    print(f"# cost model: alpha {params.alpha * 1e6:.2f} us, beta {params.beta * 1e9:.4f} ns/B "
          f"({1e-9 / params.beta:.3f} GB/s), gamma {params.gamma * 1e9:.4f} ns/B; {args.dtype}, "
          "independent uniformly spread indices")
    names = cost_model.ALGORITHMS
    print(f"{'ranks':>6} {'count':>11} {'density':>8} {'bits':>5} " + " ".join(f"{a + '(ms)':>22}" for a in names)
          + f"  {'auto':>18} {'speedup':>8}")
    rows = []
    full = cost_model.predict  # the speedup is against the dense AllReduce at full width
    for P in args.ranks:
        for n in args.n:
            for density in args.density:
                for bits in bits_list:
                    k = int(n * density)
                    value_bytes = bits / 8
                    best, pred = cost_model.choose(n, P, k, k * P, index_dtype(n).itemsize, value_bytes,
                                                   params=params)
                    baseline = full("dense", n, P, k, k * P, index_dtype(n).itemsize, itemsize, params=params)
                    speedup = baseline / pred[best]
                    rows.append({"ranks": P, "count": n, "density": density, "bits": bits, "auto": best,
                                 "speedup_vs_dense": speedup, **{f"{a}_s": pred[a] for a in names}})
                    print(f"{P:>6d} {n:>11d} {density:>8.0e} {bits:>5g} "
                          + " ".join(f"{pred[a] * 1e3:>22.3f}" for a in names) + f"  {best:>18} {speedup:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps({"params": asdict(params), "rows": rows}, indent=1))
    return 0



if __name__ == "__main__":
    sys.exit(main())
