"""Soak: thousands of randomized ScaleML collectives, interleaved with plain MPI, some failing on purpose.

    mpiexec -n P python bench/soak.py --calls 5000 --seed 1 [--json out.json]

Every rank draws the same sequence of calls from the shared seed: the
operation (sparse_allreduce with every exact algorithm, quantized_allreduce
with every lossy one, topk_allreduce, adaptive_allreduce, the drop-in
scaleml.Comm.Allreduce, and plain mpi4py collectives on the same
communicators), the communicator (the world, a duplicate, a split into two
halves, a subset with MPI_COMM_NULL elsewhere), the size (0 to ~3e5), the
density and the dtype. About one call in ten fails on purpose: one random
rank passes a bad argument (of a random kind: out-of-range index, NaN, an
object of the wrong type, a wrong size), and every rank must raise. Every
result is checked: exact algorithms against MPI_Allreduce of the same data
(float64 reference, relative tolerance of float32/64 summation), lossy ones
for bitwise identity across ranks and the error bound of their format. A hang
is caught by ScaleML's watchdog (SCALEML_TIMEOUT, set to 120 s here unless
given) or by the caller's timeout. Rank 0 prints (and writes with --json) the
totals: calls, calls per kind, injected failures, results checked, failures
not raised everywhere (must be 0), wrong results (must be 0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

os.environ.setdefault("SCALEML_TIMEOUT", "120")

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import scaleml  # noqa: E402
from scaleml.compress import QSGD, Cast, ErrorFeedback, OneBit, TopK  # noqa: E402

world = MPI.COMM_WORLD


def communicators() -> list[tuple[str, MPI.Intracomm | None]]:
    """The world, a duplicate, halves of a split, and a subset (MPI_COMM_NULL outside it)."""
    r = world.Get_rank()
    half = world.Split(r % 2, r)
    subset = world.Create(world.Get_group().Incl(list(range(0, world.Get_size(), 2))))
    return [("world", world), ("dup", world.Dup()), ("split", half),
            ("subset", None if subset == MPI.COMM_NULL else subset)]


def same_everywhere(comm: MPI.Intracomm, a: np.ndarray) -> bool:
    digest = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
    return len(set(comm.allgather(digest))) == 1


def reference(comm: MPI.Intracomm, dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total, total_abs = np.zeros(dense.size), np.zeros(dense.size)
    comm.Allreduce(dense.astype(np.float64), total)
    comm.Allreduce(np.abs(dense.astype(np.float64)), total_abs)
    return total, total_abs


def check_close(got: np.ndarray, total: np.ndarray, total_abs: np.ndarray, dtype, ranks: int) -> bool:
    eps = np.finfo(dtype).eps
    return bool(np.all(np.abs(got.astype(np.float64) - total) <= 4 * ranks * eps * total_abs + 1e-30))


class Soak:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)  # the same stream on every rank: the same calls everywhere
        self.counts: dict[str, int] = {}
        self.injected = self.raised_everywhere = self.not_raised = self.checked = self.wrong = 0
        self.feedback: dict[tuple[str, str], object] = {}

    def data(self, comm: MPI.Intracomm, n: int, density: float, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        local = np.random.default_rng([int(self.rng.integers(1 << 30)), comm.Get_rank()])
        nnz = int(round(density * n))
        idx = np.sort(local.choice(n, nnz, replace=False)) if nnz else np.zeros(0, np.int64)
        vals = local.standard_normal(nnz).astype(dtype)
        dense = np.zeros(n, dtype)
        dense[idx] = vals
        return idx, vals, dense

    def one_call(self, name: str, comm: MPI.Intracomm) -> None:
        P, rank = comm.Get_size(), comm.Get_rank()
        kind = str(self.rng.choice(["sparse", "quantized", "topk", "adaptive", "dropin", "mpi"],
                                   p=[0.3, 0.2, 0.1, 0.05, 0.25, 0.1]))
        n = int(self.rng.choice([0, 1, 2, P, 100, 1000, 5000, 40000, 300000],
                                p=[.03, .05, .04, .04, .2, .25, .2, .15, .04]))
        density = float(self.rng.choice([0.0, 0.001, 0.01, 0.1, 0.5, 1.0]))
        dtype = np.float32 if self.rng.random() < 0.7 else np.float64
        fail = self.rng.random() < 0.1 and P > 1 and kind != "mpi"
        bad_rank = int(self.rng.integers(1 << 30)) % P  # integers(P) draws nothing when P = 1: out of step
        bad_kind = str(self.rng.choice(["nan", "type", "size", "index"]))
        if kind == "dropin" and bad_kind == "nan":  # NaN is data to MPI_Allreduce, and to its drop-in
            bad_kind = "type"
        if kind == "adaptive":  # a matrix of at least P rows
            rows = max(P, 4)
            n = rows * max(n // rows, 1)
        idx, vals, dense = self.data(comm, n, density, dtype)
        if rank == 0:  # each collective counted once, by its communicator's rank 0
            self.counts[kind] = self.counts.get(kind, 0) + 1
        me_bad = fail and rank == bad_rank
        if os.environ.get("SOAK_VERBOSE"):
            print(f"[world rank {world.Get_rank()}] {name}: {kind} n={n} density={density} "
                  f"{np.dtype(dtype).name} fail={fail} bad_rank={bad_rank} {bad_kind}", flush=True)
        n_arg = n  # the n a sparse call passes (another on a rank given a bad size)
        if me_bad:
            if bad_kind == "nan" and vals.size:
                vals[0] = np.nan
                dense[idx[0]] = np.nan
            elif bad_kind == "type":
                vals, dense = vals.astype(np.int32), dense.astype(np.int32)
            elif bad_kind == "size":
                dense = np.zeros(n + 1, dtype)
                n_arg = n + 1
            elif bad_kind == "index" and kind == "sparse":
                idx = idx.copy()
                idx = np.append(idx, n + 5)
                vals = np.append(vals, dtype(1))
            else:
                dense = object()  # type: ignore[assignment]
                vals = object()  # type: ignore[assignment]
        raised = None
        result = None
        algorithm = "auto"
        try:
            if kind == "sparse":
                algorithm = str(self.rng.choice(("auto", *scaleml.algorithms.EXACT)))
                result = scaleml.sparse_allreduce(idx, vals, n_arg, comm, algorithm)
            elif kind == "quantized":
                algorithm = str(self.rng.choice(("auto", *scaleml.algorithms.LOSSY)))
                fmt = [QSGD(bits=4, bucket=64), QSGD(bits=8, bucket=128, norm="max"), Cast("fp16"),
                       OneBit(bucket=64)][int(self.rng.integers(4))]
                result = scaleml.quantized_allreduce(dense, comm, fmt, algorithm=algorithm)
            elif kind == "topk":
                ef = self.feedback.setdefault((name, "topk"), ErrorFeedback(TopK(ratio=0.05)))
                result = scaleml.topk_allreduce(dense, comm, error_feedback=ef, name=f"t{n}_{np.dtype(dtype).name}")
            elif kind == "adaptive":
                rows = max(P, 4)
                g = dense.reshape(rows, -1) if isinstance(dense, np.ndarray) and dense.size == n else dense
                state = self.feedback.setdefault((name, "adaptive"), scaleml.AdaptiveAllreduceState(pi=8))
                result = scaleml.adaptive_allreduce(g, comm, state=state, name=f"a{n}_{np.dtype(dtype).name}")
            elif kind == "dropin":
                out = np.empty(n, dtype)
                # Below min_count a bad buffer joins the others' MPI_Allreduce with NaN at index 0 (as in the
                # tuner's MPI periods); an empty call has no index 0 to carry it, so its failures go to the engine.
                min_count = int(self.rng.choice([0, 1000, 4096]))
                scaleml.Comm(comm, min_count=0 if fail and n == 0 else min_count).Allreduce(dense, out, MPI.SUM)
                result = out
            else:
                out = np.empty(n, dtype)
                comm.Allreduce(dense, out, MPI.SUM)
                result = out
        except Exception as exc:  # noqa: BLE001 (every rank must raise; which exception is checked elsewhere)
            raised = type(exc).__name__
        everyone = comm.allgather(raised is not None)
        root = rank == 0
        if fail:
            self.injected += root
            if all(everyone):
                self.raised_everywhere += root
            else:
                self.not_raised += root
                if rank == 0:
                    print(f"NOT RAISED EVERYWHERE: {kind} {algorithm} n={n} {bad_kind} on rank {bad_rank}: {everyone}",
                          flush=True)
            return
        if any(everyone):
            self.wrong += root
            if rank == 0:
                print(f"UNEXPECTED ERROR: {kind} {algorithm} n={n} density={density}: {comm.allgather(raised)}",
                      flush=True)
            return
        # check the result
        if kind == "adaptive":
            ok = same_everywhere(comm, result)
        else:
            got = result.to_dense() if hasattr(result, "to_dense") else np.asarray(result).reshape(-1)
            if kind == "topk":
                ok = same_everywhere(comm, got)
            elif kind == "quantized":
                total, total_abs = reference(comm, dense)
                ok = same_everywhere(comm, got) and bool(np.all(np.isfinite(got)))
                # every format here bounds the error by a few times the largest summed magnitude
                ok = ok and bool(np.all(np.abs(got - total) <= 4 * P * (total_abs.max() if n else 0) + 1e-30))
            else:
                total, total_abs = reference(comm, dense)
                ok = check_close(got, total, total_abs, dtype, P)
        self.checked += root
        if not ok:
            self.wrong += root
            if rank == 0:
                print(f"WRONG RESULT: {kind} {algorithm} n={n} density={density} dtype={np.dtype(dtype).name}",
                      flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000, help="calls on the world (the sub-communicators get theirs)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the totals here (rank 0)")
    args = p.parse_args(argv)
    comms = communicators()
    soak = Soak(args.seed)
    t0 = time.perf_counter()
    for i in range(args.calls):
        name, comm = comms[int(soak.rng.integers(len(comms)))]
        if name == "subset":  # only its members call; the shared stream stays in step on every rank
            state = soak.rng.bit_generator.state
            if comm is not None:
                soak.one_call(name, comm)
            soak.rng.bit_generator.state = state
            soak.rng.integers(1 << 30, size=3)  # the same advance on every rank
            world.Barrier()
        else:
            soak.one_call(name, comm)
        if args.calls >= 10 and (i + 1) % max(args.calls // 10, 1) == 0 and world.Get_rank() == 0:
            print(f"  {i + 1} calls, {time.perf_counter() - t0:.0f} s", flush=True)
    totals = {k: world.allreduce(v) for k, v in (("results_checked", soak.checked),
                                                  ("injected_failures", soak.injected),
                                                  ("raised_on_every_rank", soak.raised_everywhere),
                                                  ("not_raised_everywhere", soak.not_raised),
                                                  ("wrong_results", soak.wrong))}
    by_kind: dict[str, int] = {}
    for counts in world.allgather(soak.counts):
        for k, v in counts.items():
            by_kind[k] = by_kind.get(k, 0) + v
    summary = {"ranks": world.Get_size(), "collective_calls": sum(by_kind.values()), "calls_by_kind": by_kind,
               "seconds": round(time.perf_counter() - t0, 1), "hangs": 0, **totals}
    if world.Get_rank() == 0:
        print(json.dumps(summary, indent=1), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(summary, f, indent=1)
    return 0 if totals["not_raised_everywhere"] == 0 and totals["wrong_results"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
