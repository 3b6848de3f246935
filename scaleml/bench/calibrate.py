"""``scaleml-bench calibrate``: measure alpha, beta, gamma, delta and the lossy formats' seconds per value of this
machine and network, and save them where ``algorithm='auto'`` reads them
(:func:`scaleml.cost_model.calibration_file`)."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from mpi4py import MPI

from .. import cost_model
from .._native import check, ffi, lib
from ..engine import engine_state
from ..sparse import sparse_allreduce
from ..value_format import value_format
from .measure import run_metadata
from .methods import make_format

CODEC_SIZES = (1 << 20, 1 << 21, 1 << 22)
"""Values per timed pass of every lossy format (float32)."""
CODEC_RUNS = 5
"""Timed passes per size (after one warm-up); their median counts."""


def calibrate(args: argparse.Namespace) -> int:
    """Ping-pong within a node (local ranks 0 and 1) for alpha_intra and beta_intra, and between rank 0 and the
    first rank of another node for alpha and beta (one node: their defaults stay, and it says so); time a
    local add for gamma and the lossy formats' kernels for their seconds per value."""
    comm = MPI.COMM_WORLD
    rank, P = comm.Get_rank(), comm.Get_size()
    if P < 2:
        if rank == 0:
            print("scaleml-bench calibrate: needs at least 2 ranks (run it under mpiexec -n 2)", file=sys.stderr)
        return 2
    topology = engine_state(comm).topology  # MPI's nodes, or SCALEML_RANKS_PER_NODE's emulated ones
    where = comm.allgather((topology.node, topology.local_rank))
    sizes = [0] + [1 << e for e in range(0, args.max_bytes.bit_length()) if (1 << e) <= args.max_bytes]
    defaults = cost_model.CostParams()
    # intra-node: local ranks 0 and 1 of the first node with two ranks
    intra_pair = next(((r, where.index((node, 1))) for r, (node, local) in enumerate(where)
                       if local == 0 and (node, 1) in where), None)
    intra_samples = ping_pong(comm, *intra_pair, sizes, args.iterations) if intra_pair else []
    alpha_intra, beta_intra = (fit_alpha_beta(*_arrays(intra_samples)) if intra_pair
                               else (defaults.alpha_intra, defaults.beta_intra))
    # inter-node: rank 0 and the first rank of node 1, under load as the collectives see it
    inter_pair = (0, where.index((1, 0))) if topology.nodes > 1 else None
    samples = ping_pong(comm, *inter_pair, sizes, args.iterations) if inter_pair else []
    fit_error = 0.0
    if inter_pair:
        m, t = _arrays(samples)
        alpha, beta_link = fit_alpha_beta(m, t)
        # Collectives keep every rank busy at once: alpha and beta under load are what they see.
        alpha_link = alpha
        alpha = max(alpha_link, alpha_under_load(comm))
        beta = max(beta_under_load(comm, args.max_bytes), beta_link)
        fitted = (m <= 1024) | (m >= 65536)
        fit_error = float(np.max(np.abs((alpha_link + beta_link * m[fitted]) - t[fitted]) / t[fitted]))
    else:  # no pair of ranks crosses a node boundary: nothing to measure the network with
        alpha = alpha_link = defaults.alpha
        beta = beta_link = defaults.beta
    # gamma: the C merge itself, on every rank at once (ranks may share cores).
    comm.Barrier()
    gamma = comm.allreduce(float(lib.scaleml_merge_seconds_per_byte(1 << 20, 5)), MPI.MAX)
    delta = delta_per_call(comm, alpha)
    codecs = codec_seconds(comm)
    if rank == 0:
        if inter_pair:
            print(f"inter-node (ranks 0 <-> {inter_pair[1]}, {topology.nodes} nodes): alpha = {alpha * 1e6:.2f} us "
                  f"(ping-pong: {alpha_link * 1e6:.2f} us)   beta = {beta * 1e9:.4f} ns/B ({1e-9 / beta:.3f} GB/s; "
                  f"one link alone: {1e-9 / beta_link:.3f} GB/s)\n"
                  f"ping-pong fit: worst relative error {fit_error:.0%} at <= 1 KiB and >= 64 KiB")
        else:
            print(f"inter-node: one node (all {P} ranks share memory; SCALEML_RANKS_PER_NODE emulates nodes): "
                  f"nothing crosses a node boundary, alpha = {alpha * 1e6:.2f} us and beta = {beta * 1e9:.4f} ns/B "
                  "keep their defaults")
        if intra_pair:
            print(f"intra-node (ranks {intra_pair[0]} <-> {intra_pair[1]}): alpha_intra = {alpha_intra * 1e6:.2f} us"
                  f"   beta_intra = {beta_intra * 1e9:.4f} ns/B ({1e-9 / beta_intra:.3f} GB/s)")
        else:
            print("intra-node: every node holds one rank: alpha_intra and beta_intra keep their defaults")
        print(f"gamma = {gamma * 1e9:.4f} ns/B (sparse merge)   delta = {delta * 1e6:.1f} us per call")
        for label, measured in (("inter", samples), ("intra", intra_samples)):
            for size, x in measured:
                print(f"  {label} {size:>10d} B  {x * 1e6:12.2f} us")
        sizes_text = ", ".join(f"2^{size.bit_length() - 1}" for size in CODEC_SIZES)
        print(f"lossy formats, ns per float32 value (the median over {sizes_text} values of the median of "
              f"{CODEC_RUNS} passes each; the slowest rank):")
        print(f"  {'format':>8} {'encode':>9} {'decode':>9} {'decode+add':>11}")
        for name, seconds in codecs.items():
            print(f"  {name:>8} {seconds.encode * 1e9:9.3f} {seconds.decode * 1e9:9.3f} "
                  f"{seconds.decode_add * 1e9:11.3f}")
        if not args.no_save:
            path = args.output or cost_model.calibration_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"alpha": alpha, "beta": beta, "gamma": gamma, "delta": delta,
                                        "alpha_intra": alpha_intra, "beta_intra": beta_intra,
                                        "codecs": cost_model.codecs_to_json(codecs),
                                        "alpha_ping_pong": alpha_link,
                                        "beta_one_link": beta_link,
                                        "fit_max_rel_error": fit_error,
                                        "samples": samples or intra_samples, "intra_samples": intra_samples,
                                        "nodes": topology.nodes, **run_metadata(comm, collective=False)}, indent=1))
            print(f"saved to {path} (read by algorithm='auto' at import; SCALEML_COST_FILE overrides the path)")
    return 0


def ping_pong(comm: MPI.Intracomm, a: int, b: int, sizes: list[int], iterations: int) -> list[tuple[int, float]]:
    """(message bytes, best one-way seconds) of ping-pongs between ranks ``a`` and ``b`` (every rank calls it;
    the others wait at the barriers); the same list on every rank."""
    rank = comm.Get_rank()
    samples = []
    for size in sizes:
        buf = np.zeros(max(size, 1), np.uint8)
        reps = max(3, min(iterations, int(iterations * 65536 / max(size, 65536))))
        best = float("inf")
        comm.Barrier()
        for _ in range(reps + 1):  # the first round trip is a warm-up
            t0 = time.perf_counter()
            if rank == a:
                comm.Send([buf, size, MPI.BYTE], dest=b, tag=7)
                comm.Recv([buf, size, MPI.BYTE], source=b, tag=7)
            elif rank == b:
                comm.Recv([buf, size, MPI.BYTE], source=a, tag=7)
                comm.Send([buf, size, MPI.BYTE], dest=a, tag=7)
            best = min(best, (time.perf_counter() - t0) / 2)
        samples.append((size, best))
    return comm.bcast(samples, root=a)


def _arrays(samples: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([s for s, _ in samples], float), np.array([x for _, x in samples], float)


def codec_seconds(comm: MPI.Intracomm, sizes: tuple[int, ...] = CODEC_SIZES,
                  runs: int = CODEC_RUNS) -> dict[str, cost_model.CodecSeconds]:
    """Seconds per float32 value of every lossy format's encode, decode and decode-and-add passes.

    Each rank times the C kernels the collectives call
    (``scaleml_codec_seconds_per_value``: the median of ``runs`` passes after
    a warm-up) at every size, on one core each and all at once, as in a
    collective; a format's figure is the median over the sizes, then the
    largest over the ranks (ranks that share cores or memory bandwidth are as
    slow as the slowest).
    """
    out = ffi.new("double[3]")
    measured = {}
    comm.Barrier()
    for name in cost_model.CODEC_FORMATS:
        codec = value_format(make_format(name, comm.Get_rank())).codec()
        per_size = []
        for size in sizes:
            check(lib.scaleml_codec_seconds_per_value(codec, size, 4, runs, out))
            per_size.append(list(out))
        measured[name] = np.median(np.array(per_size), axis=0)
    every_rank = comm.allgather(measured)
    return {name: cost_model.CodecSeconds(*(float(v) for v in np.max([m[name] for m in every_rank], axis=0)))
            for name in cost_model.CODEC_FORMATS}


def delta_per_call(comm: MPI.Intracomm, alpha: float, rounds: int = 100) -> float:
    """The engine's fixed seconds per call: a forced recursive doubling of empty vectors, less its messages.

    What remains is the agreement (one small MPI_Allreduce), validation and
    the Python around the C call: the cost model's ``delta``.
    """
    idx, vals = np.empty(0, np.uint32), np.empty(0, np.float32)
    times = []
    for i in range(rounds + 10):  # the first ten are a warm-up
        comm.Barrier()
        t0 = time.perf_counter()
        sparse_allreduce(idx, vals, 1, comm, "recursive_doubling")
        if i >= 10:
            times.append(time.perf_counter() - t0)
    P = comm.Get_size()
    messages = (P.bit_length() - 1) + (2 if P & (P - 1) else 0)
    return max(comm.allreduce(float(np.median(times)), MPI.MAX) - messages * alpha, 0.0)


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
