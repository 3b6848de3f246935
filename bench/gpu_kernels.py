"""Throughput of ScaleML's CUDA kernels against a device copy, the same job in torch, and the CPU kernel.

Kernel mode (one process, one GPU)::

    python bench/gpu_kernels.py --out DIR            # 2^24 and 2^26 float32; DIR/gpu_kernels.json and .md

For each kernel and size: the kernel through ``scaleml._cuda.backend().call`` (device pointers, torch's
current stream), timed with CUDA events around ``--reps`` calls after ``--warmup`` calls, ``--runs`` times
(the median is reported, every run is kept in the JSON); in the same run a device-to-device copy of the same
bytes (``torch.Tensor.copy_``), the job written with torch operations, and the CPU kernel of the C core on
numpy input (timed with ``time.perf_counter``, at sizes up to ``--cpu-max-log2``). Throughput is input bytes
(n x 4 for float32 input; the payload for decoders) per second.

Targets (issue 20): QSGD 4-bit encode, each decode-and-add and the casts at least 50% of the copy's
bandwidth; TopK 1% at least 2x ``torch.topk``; every kernel at least 3x its torch version.

Allreduce mode (under mpiexec, every rank on the one GPU)::

    mpiexec -n 4 python bench/gpu_kernels.py --allreduce --out DIR     # DIR/allreduce_P4.json and .md

``quantized_allreduce`` (QSGD 4-bit, ``quantized_ring``) of 2^26 float32 CUDA tensors: the call's time
(max over ranks, median of runs), its phases from ScaleML's timeline (``scaleml.timeline``: scan, agreement,
plan, algorithm, decode; the algorithm phase holds the encodes, MPI and the decode-adds of the ring), and,
measured apart on the same arrays, the staging copies (device to host and back) and the ring's encodes and
decodes at its block size on the path the call uses, so that MPI is estimated as the algorithm phase minus them.

With ``SCALEML_CUDA_EMULATE=1`` (no GPU) both modes run on the emulation with small sizes and wall-clock
timers: a check of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from scaleml import _cuda
from scaleml._cuda_emulation import EmulatedDeviceArray
from scaleml._native import ffi, lib

try:
    import torch
except ImportError:  # the baselines need torch; the emulation runs without it
    torch = None

BUCKET = 512
TOPK_RATIO = 0.01
SPARSE_DENSITY = 0.01


def gpu() -> bool:
    """Real CUDA timing: torch sees a device and the emulation is off."""
    return torch is not None and torch.cuda.is_available() and not _cuda.emulated()


class Timer:
    """Seconds per call of ``fn``: CUDA events around ``reps`` calls on the GPU, else the wall clock."""

    def __init__(self, warmup: int, reps: int, runs: int) -> None:
        self.warmup, self.reps, self.runs = warmup, reps, runs

    def __call__(self, fn: Callable[[], Any], device: bool = True) -> list[float]:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.runs):
            if device and gpu():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(self.reps):
                    fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3 / self.reps)
            else:
                t0 = time.perf_counter()
                for _ in range(self.reps):
                    fn()
                times.append((time.perf_counter() - t0) / self.reps)
        return times


class Device:
    """Device buffers (CUDA torch tensors, or the emulation's arrays) and the stream argument of the calls."""

    def __init__(self) -> None:
        self.be = _cuda.backend()

    def put(self, host: np.ndarray) -> Any:
        if gpu():
            return torch.from_numpy(np.ascontiguousarray(host)).cuda()
        return EmulatedDeviceArray.from_host(host)

    def empty_bytes(self, nbytes: int) -> Any:
        return self.put(np.zeros(max(int(nbytes), 1), np.uint8))

    @staticmethod
    def ptr(a: Any) -> int:
        return int(a.data_ptr()) if gpu() else int(a.__cuda_array_interface__["data"][0])

    @staticmethod
    def stream() -> int:
        return int(torch.cuda.current_stream().cuda_stream) if gpu() else 0

    def call(self, name: str, *args: Any) -> None:
        self.be.call(name, *args, self.stream())


def vp(a: np.ndarray) -> Any:
    return ffi.cast("void *", a.ctypes.data)


def tdev() -> str:
    return "cuda" if gpu() else "cpu"


# ------------------------------------------------------------------------------------------- the torch versions

def torch_qsgd4_encode(x: Any) -> Callable[[], Any]:
    """Norm per bucket, stochastic rounding to 7 levels with torch.rand, sign + 3 bits, two codes per byte."""
    xb = x.view(-1, BUCKET)

    def run() -> Any:
        norm = xb.norm(dim=1, keepdim=True)
        scaled = xb.abs() / norm.clamp_min(1e-30) * 7
        low = scaled.floor()
        level = low + (torch.rand_like(scaled) < scaled - low)
        code = (level.to(torch.uint8) | ((xb < 0).to(torch.uint8) << 3)).view(-1)
        return norm, code[0::2] | (code[1::2] << 4)
    return run


def torch_qsgd4_decode_add(x: Any, acc: Any) -> Callable[[], Any]:
    norm, packed = torch_qsgd4_encode(x)()

    def run() -> Any:
        code = torch.stack((packed & 15, packed >> 4), dim=1).view(-1, BUCKET)
        value = (code & 7).to(acc.dtype) * (norm / 7)
        acc.view(-1, BUCKET).add_(torch.where(code >= 8, -value, value))
    return run


_BIT_WEIGHTS: dict[str, Any] = {}


def _weights() -> Any:
    if tdev() not in _BIT_WEIGHTS:
        _BIT_WEIGHTS[tdev()] = (2 ** torch.arange(8, device=tdev())).to(torch.uint8)
    return _BIT_WEIGHTS[tdev()]


def torch_onebit_encode_sum(x: Any, residual: Any) -> Callable[[], Any]:
    """y = x + residual; per bucket the means of the non-negative and negative entries; sign bits packed;
    residual = y - decoded."""
    def run() -> Any:
        y = (x + residual).view(-1, BUCKET)
        positive = y >= 0
        count = positive.sum(1, keepdim=True)
        pos_mean = torch.where(positive, y, 0).sum(1, keepdim=True) / count.clamp_min(1)
        neg_mean = torch.where(positive, 0, y).sum(1, keepdim=True) / (BUCKET - count).clamp_min(1)
        residual.view(-1, BUCKET).copy_(y - torch.where(positive, pos_mean, neg_mean))
        bits = (positive.view(-1, 8).to(torch.uint8) * _weights()).sum(1, dtype=torch.uint8)
        return pos_mean, neg_mean, bits
    return run


def torch_onebit_decode_add(x: Any, acc: Any) -> Callable[[], Any]:
    pos_mean, neg_mean, bits = torch_onebit_encode_sum(x, torch.zeros_like(x))()

    def run() -> Any:
        positive = ((bits.view(-1, 1) & _weights()) != 0).view(-1, BUCKET)
        acc.view(-1, BUCKET).add_(torch.where(positive, pos_mean, neg_mean))
    return run


def torch_topk(x: Any, k: int) -> Callable[[], Any]:
    def run() -> Any:
        idx = torch.topk(x.abs(), k, sorted=False).indices
        return idx, x.gather(0, idx)
    return run


# ------------------------------------------------------------------------------------------------- the kernels

def attempt(fn: Callable[[], Any]) -> None:
    """Prepare a decoder's input with a kernel; a kernel that fails (not built) fails again in its own row."""
    try:
        fn()
    except Exception:  # noqa: BLE001 - reported by the row that times it
        pass


def kernel_cases(dev: Device, n: int, host: np.ndarray) -> list[dict[str, Any]]:
    """Each kernel at size n: name, input bytes, the call, its torch version, its CPU kernel, its target."""
    vb = 4
    x = dev.put(host)
    key = int(lib.scaleml_rng_key(1, 0, 0, 0))
    cap_q = int(lib.scaleml_qsgd_max_bytes(n, 4, BUCKET, 0))
    cap_1 = int(lib.scaleml_onebit_bytes(n, BUCKET))
    k = max(1, math.ceil(TOPK_RATIO * n))
    cap_t = int(lib.scaleml_topk_bytes(min(n, 2 * k + 64), vb))
    written, written64 = dev.be.new("size_t *"), dev.be.new("uint64_t *")
    qmsg, onebit_msg, half, tmsg = (dev.empty_bytes(cap_q), dev.empty_bytes(cap_1), dev.empty_bytes(2 * n),
                                    dev.empty_bytes(cap_t))
    acc, residual, out = dev.put(np.zeros(n, np.float32)), dev.put(np.zeros(n, np.float32)), dev.put(host)
    P = dev.ptr

    # host copies and payloads for the CPU kernels (and the decoders' inputs)
    h_q, h_w = np.zeros(cap_q, np.uint8), ffi.new("size_t *")
    lib.scaleml_qsgd_encode(vp(host), vb, n, 4, BUCKET, 0, 0, key, vp(h_q), cap_q, h_w)
    attempt(lambda: dev.call("scaleml_cuda_qsgd_encode", P(x), vb, n, 4, BUCKET, 0, 0, key, P(qmsg), cap_q, written))
    h_1, h_res, h_acc, h_out = (np.zeros(cap_1, np.uint8), np.zeros(n, np.float32), np.zeros(n, np.float32),
                                np.zeros(n, np.float32))
    lib.scaleml_onebit_encode(vp(host), vb, n, BUCKET, vp(h_1), cap_1, vp(h_res))
    attempt(lambda: dev.call("scaleml_cuda_onebit_encode", P(x), vb, n, BUCKET, P(onebit_msg), cap_1, P(residual)))
    h_half = np.zeros(n, np.uint16)
    h_t, h_tw = np.zeros(cap_t, np.uint8), ffi.new("size_t *")
    sparse_host = np.where(np.random.default_rng(3).random(n) < SPARSE_DENSITY, host, 0).astype(np.float32)
    sparse = dev.put(sparse_host)
    nnz = int(lib.scaleml_count_nonzeros(vp(sparse_host), n, vb))
    idx_d, val_d = dev.empty_bytes(4 * nnz), dev.empty_bytes(4 * nnz)
    attempt(lambda: dev.call("scaleml_cuda_extract_nonzeros", P(sparse), n, vb, 4, P(idx_d), P(val_d), nnz, written64))
    h_idx, h_val = np.zeros(max(nnz, 1), np.uint32), np.zeros(max(nnz, 1), np.float32)

    t = None if torch is None else torch.from_numpy(host).to(tdev())
    t_acc = None if torch is None else torch.zeros(n, device=tdev())
    t_res = None if torch is None else torch.zeros(n, device=tdev())
    t_half = None if torch is None else t.half()
    t_bf = None if torch is None else t.bfloat16()
    t_sparse = None if torch is None else torch.from_numpy(sparse_host).to(tdev())
    t_idx = None if torch is None else t_sparse.nonzero().view(-1)
    t_vals = None if torch is None else t_sparse[t_idx]

    def tv(make: Callable[[], Callable[[], Any]]) -> Callable[[], Any] | None:
        return None if torch is None else make()

    def cast_cases(fmt: int, label: str, t_low: Any) -> list[dict[str, Any]]:
        dtype = None if torch is None else (torch.float16 if fmt == 0 else torch.bfloat16)
        return [
            dict(kernel=f"{label} encode", bytes=4 * n, target="copy",
                 gpu=lambda: dev.call("scaleml_cuda_cast_encode", P(x), vb, n, fmt, P(half)),
                 torch=tv(lambda: lambda: t.to(dtype)),
                 cpu=lambda: lib.scaleml_cast_encode(vp(host), vb, n, fmt, vp(h_half))),
            dict(kernel=f"{label} decode", bytes=2 * n, target="copy",
                 gpu=lambda: dev.call("scaleml_cuda_cast_decode", P(half), n, fmt, P(out), vb),
                 torch=tv(lambda: lambda: t_low.float()),
                 cpu=lambda: lib.scaleml_cast_decode(vp(h_half), n, fmt, vp(h_out), vb)),
            dict(kernel=f"{label} decode-and-add", bytes=2 * n, target="copy",
                 gpu=lambda: dev.call("scaleml_cuda_cast_decode_add", P(half), n, fmt, P(acc), vb),
                 torch=tv(lambda: lambda: t_acc.add_(t_low)),
                 cpu=lambda: (lib.scaleml_cast_decode(vp(h_half), n, fmt, vp(h_out), vb), np.add(h_acc, h_out, h_acc))),
        ]

    cases = [
        dict(kernel="QSGD 4-bit encode", bytes=4 * n, target="copy",
             gpu=lambda: dev.call("scaleml_cuda_qsgd_encode", P(x), vb, n, 4, BUCKET, 0, 0, key, P(qmsg), cap_q,
                                  written),
             torch=tv(lambda: torch_qsgd4_encode(t)),
             cpu=lambda: lib.scaleml_qsgd_encode(vp(host), vb, n, 4, BUCKET, 0, 0, key, vp(h_q), cap_q, h_w)),
        dict(kernel="QSGD 4-bit decode", bytes=int(h_w[0]), target=None,
             gpu=lambda: dev.call("scaleml_cuda_qsgd_decode", P(qmsg), int(h_w[0]), n, 4, BUCKET, 0, P(out), vb),
             torch=None,
             cpu=lambda: lib.scaleml_qsgd_decode(vp(h_q), int(h_w[0]), n, 4, BUCKET, 0, vp(h_out), vb)),
        dict(kernel="QSGD 4-bit decode-and-add", bytes=int(h_w[0]), target="copy",
             gpu=lambda: dev.call("scaleml_cuda_qsgd_decode_add", P(qmsg), int(h_w[0]), n, 4, BUCKET, P(acc), vb),
             torch=tv(lambda: torch_qsgd4_decode_add(t, t_acc)),
             cpu=lambda: lib.scaleml_qsgd_decode_add(vp(h_q), int(h_w[0]), n, 4, BUCKET, vp(h_acc), vb)),
        dict(kernel="1-bit encode (error feedback fused)", bytes=4 * n, target=None,
             gpu=lambda: dev.call("scaleml_cuda_onebit_encode_sum", P(x), P(residual), vb, n, BUCKET, P(onebit_msg),
                                  cap_1, P(residual)),
             torch=tv(lambda: torch_onebit_encode_sum(t, t_res)),
             cpu=lambda: lib.scaleml_onebit_encode_sum(vp(host), vp(h_res), vb, n, BUCKET, vp(h_1), cap_1,
                                                       vp(h_res))),
        dict(kernel="1-bit decode-and-add", bytes=cap_1, target="copy",
             gpu=lambda: dev.call("scaleml_cuda_onebit_decode_add", P(onebit_msg), cap_1, n, BUCKET, P(acc), vb),
             torch=tv(lambda: torch_onebit_decode_add(t, t_acc)),
             cpu=lambda: lib.scaleml_onebit_decode_add(vp(h_1), cap_1, n, BUCKET, vp(h_acc), vb)),
        *cast_cases(0, "fp16", t_half),
        *cast_cases(1, "bf16", t_bf),
        dict(kernel="TopK 1% exact", bytes=4 * n, target="topk",
             gpu=lambda: dev.call("scaleml_cuda_topk_encode", P(x), vb, n, k, 0, 16384, key, P(tmsg), cap_t, written,
                                  P(residual)),
             torch=tv(lambda: torch_topk(t, k)),
             cpu=lambda: lib.scaleml_topk_encode(vp(host), vb, n, k, 0, 16384, key, vp(h_t), cap_t, h_tw, vp(h_res))),
        dict(kernel="TopK 1% sampled", bytes=4 * n, target="topk",
             gpu=lambda: dev.call("scaleml_cuda_topk_encode", P(x), vb, n, k, 1, 16384, key, P(tmsg), cap_t, written,
                                  P(residual)),
             torch=tv(lambda: torch_topk(t, k)),
             cpu=lambda: lib.scaleml_topk_encode(vp(host), vb, n, k, 1, 16384, key, vp(h_t), cap_t, h_tw, vp(h_res))),
        dict(kernel="non-zero extract (1%)", bytes=4 * n, target=None,
             gpu=lambda: dev.call("scaleml_cuda_extract_nonzeros", P(sparse), n, vb, 4, P(idx_d), P(val_d), nnz,
                                  written64),
             torch=tv(lambda: lambda: (t_sparse.nonzero(), t_sparse[t_sparse != 0])),
             cpu=lambda: lib.scaleml_extract_nonzeros(vp(sparse_host), n, vb, 4, vp(h_idx), vp(h_val), nnz)),
        dict(kernel="scatter-add (1%)", bytes=8 * nnz, target=None,
             gpu=lambda: dev.call("scaleml_cuda_scatter_add", P(idx_d), 4, P(val_d), vb, nnz, P(acc), n),
             torch=tv(lambda: lambda: t_acc.index_add_(0, t_idx, t_vals)),
             cpu=lambda: np.add.at(h_acc, h_idx[:nnz], h_val[:nnz])),
    ]
    if torch is not None:  # the copy of the same bytes, the bandwidth the targets refer to; measured again last,
        # the A/A control: how far two measurements of the same thing differ in this run
        src, dst = torch.from_numpy(host).to(tdev()), torch.empty(n, device=tdev())
        cases.insert(0, dict(kernel="device-to-device copy", bytes=4 * n, target=None, gpu=None,
                             torch=lambda: dst.copy_(src), cpu=None))
        cases.append(dict(kernel="device-to-device copy (A/A, again)", bytes=4 * n, target=None, gpu=None,
                          torch=lambda: dst.copy_(src), cpu=None))
    return cases


def run_kernels(args: argparse.Namespace) -> dict[str, Any]:
    dev = Device()
    timer = Timer(args.warmup, args.reps, args.runs)
    cpu_timer = Timer(1, 1, args.cpu_runs)
    rows = []
    for log2 in args.sizes:
        n = 1 << log2
        host = np.random.default_rng(log2).standard_normal(n).astype(np.float32)
        copy_gbs = None
        for case in kernel_cases(dev, n, host):
            row: dict[str, Any] = {"kernel": case["kernel"], "n": n, "log2": log2, "input_bytes": case["bytes"],
                                   "target": case["target"]}
            for side in ("gpu", "torch", "cpu"):
                fn = case[side]
                if fn is None or (side == "cpu" and log2 > args.cpu_max_log2):
                    continue
                try:
                    times = (cpu_timer(fn, device=False) if side == "cpu" else timer(fn))
                except Exception as exc:  # noqa: BLE001 - a kernel not built yet: recorded, the others go on
                    row[f"{side}_error"] = f"{type(exc).__name__}: {exc}"
                    continue
                row[f"{side}_seconds"] = times
                row[f"{side}_gbs"] = case["bytes"] / statistics.median(times) / 1e9
            if case["kernel"] == "device-to-device copy":
                copy_gbs = row.get("torch_gbs")
            row["copy_gbs"] = copy_gbs
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("_seconds")}), flush=True)
    return {"mode": "kernels", "rows": rows, **environment(args)}


def verdict(row: dict[str, Any]) -> str:
    """Whether the row meets its targets (>= 50% of copy; TopK >= 2x torch.topk; every kernel >= 3x torch)."""
    g, t, c = row.get("gpu_gbs"), row.get("torch_gbs"), row.get("copy_gbs")
    if g is None:
        return "not run" if "gpu_error" not in row else "error"
    checks = []
    if row["target"] == "copy" and c:
        checks.append(g >= 0.5 * c)
    if row["target"] == "topk" and t:
        checks.append(g >= 2 * t)
    if t:
        checks.append(g >= 3 * t)
    return "-" if not checks else ("yes" if all(checks) else "NO")


def kernels_table(result: dict[str, Any]) -> str:
    lines = ["| kernel | size | GB/s | % of copy | x torch | x CPU | target met? |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["kernel"] == "device-to-device copy":
            lines.append(f"| copy (torch `copy_`) | 2^{r['log2']} | {r.get('torch_gbs', 0):.3g} | 100% | | | |")
            continue
        if r["kernel"].startswith("device-to-device copy (A/A"):
            again, first = r.get("torch_gbs", 0), r.get("copy_gbs") or 0
            lines.append(f"| copy again (A/A control) | 2^{r['log2']} | {again:.3g} | "
                         f"{f'{100 * again / first:.0f}%' if first else '-'} | | | |")
            continue
        g, t, c, cpu = r.get("gpu_gbs"), r.get("torch_gbs"), r.get("copy_gbs"), r.get("cpu_gbs")
        lines.append(f"| {r['kernel']} | 2^{r['log2']} | {f'{g:.3g}' if g else r.get('gpu_error', '-')[:40]} | "
                     f"{f'{100 * g / c:.0f}%' if g and c else '-'} | {f'{g / t:.1f}x' if g and t else '-'} | "
                     f"{f'{g / cpu:.3g}x' if g and cpu else '-'} | {verdict(r)} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- allreduce mode

def run_allreduce(args: argparse.Namespace) -> dict[str, Any] | None:
    from mpi4py import MPI

    import scaleml
    from scaleml import _device, timeline
    from scaleml import compress as C

    comm = MPI.COMM_WORLD
    P, rank = comm.Get_size(), comm.Get_rank()
    n = 1 << args.allreduce_log2
    if gpu():
        torch.cuda.set_device(0)  # every rank on the one GPU
    trace = Path(args.out) / f"allreduce_P{P}.trace.json"
    host = np.random.default_rng([5, rank]).standard_normal(n).astype(np.float32)
    x = torch.from_numpy(host).cuda() if gpu() else EmulatedDeviceArray.from_host(host)

    def call() -> None:
        scaleml.quantized_allreduce(x, comm, C.QSGD(bits=4, seed=1), algorithm="quantized_ring")

    call()  # warm-up (allocations, the first MPI messages), outside the timeline
    timeline.start(trace, rank)
    totals = []
    for _ in range(args.allreduce_runs):
        comm.Barrier()
        t0 = time.perf_counter()
        call()
        if gpu():
            torch.cuda.synchronize()
        totals.append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    timeline.flush()
    events = [e for e in timeline.read(timeline.path())["traceEvents"]
              if e.get("ph") == "X" and e.get("cat") != "call"]
    calls = args.allreduce_runs
    phases: dict[str, float] = {}
    for e in events:
        phases[e["cat"]] = phases.get(e["cat"], 0.0) + e["dur"] / 1e6 / calls
    timeline.stop()

    # measured apart, on the same array: the staging copies, and the ring's encodes and decode-adds of
    # blocks of n / P elements on the path the call uses (the host kernels while staging is the path)
    view = _device.device_array(x)
    staged = np.empty(n, np.float32)
    comm.Barrier()
    t0 = time.perf_counter()
    _device.to_host(view, staged)
    d2h = time.perf_counter() - t0
    comm.Barrier()
    t0 = time.perf_counter()
    _device.from_host(staged, view)
    h2d = time.perf_counter() - t0
    block = -(-n // P)
    cap = int(lib.scaleml_qsgd_max_bytes(block, 4, 512, 0))
    msg, written, acc = np.zeros(cap, np.uint8), ffi.new("size_t *"), np.zeros(block, np.float32)
    t0 = time.perf_counter()
    lib.scaleml_qsgd_encode(vp(host), 4, block, 4, 512, 0, 0, 1, vp(msg), cap, written)
    encode_block = time.perf_counter() - t0
    t0 = time.perf_counter()
    lib.scaleml_qsgd_decode_add(vp(msg), int(written[0]), block, 4, 512, vp(acc), 4)
    decode_block = time.perf_counter() - t0
    # quantized_ring: P-1 reduce-scatter steps (encode, send, decode-and-add) and an allgather of the P owners'
    # encoded blocks (one encode, P decodes): P encodes and about 2P - 1 decodes of a block per rank
    encode_est, decode_est = P * encode_block, (2 * P - 1) * decode_block
    mine = {"rank": rank, "phases": phases, "d2h": d2h, "h2d": h2d, "encode_estimate": encode_est,
            "decode_estimate": decode_est}
    everyone = comm.gather(mine, root=0)
    if rank:
        return None
    algorithm = max(r["phases"].get("algorithm", 0.0) for r in everyone)
    split = {"copies (D2H + H2D, measured apart)": max(r["d2h"] + r["h2d"] for r in everyone),
             "encode (estimate: P block encodes)": max(r["encode_estimate"] for r in everyone),
             "decode (estimate: 2P-1 block decode-adds)": max(r["decode_estimate"] for r in everyone)}
    split["MPI (estimate: algorithm phase - encode - decode)"] = max(
        algorithm - split["encode (estimate: P block encodes)"] - split["decode (estimate: 2P-1 block decode-adds)"],
        0.0)
    return {"mode": "allreduce", "ranks": P, "n": n, "seconds_runs": totals, "seconds": statistics.median(totals),
            "phases_per_rank": [r["phases"] for r in everyone], "split": split, "per_rank": everyone,
            **environment(args)}


def allreduce_table(result: dict[str, Any]) -> str:
    lines = [f"quantized_allreduce, QSGD 4-bit, quantized_ring, 2^{int(math.log2(result['n']))} float32, "
             f"{result['ranks']} ranks on one GPU: {1e3 * result['seconds']:.1f} ms per call (median; runs "
             f"{', '.join(f'{1e3 * s:.1f}' for s in result['seconds_runs'])} ms)", "",
             "| part | ms per call | how it was measured |", "|---|---|---|"]
    phases = result["phases_per_rank"]
    for name in sorted({k for p in phases for k in p}):
        lines.append(f"| timeline phase `{name}` | {1e3 * max(p.get(name, 0.0) for p in phases):.1f} | "
                     "ScaleML's timeline, max over ranks |")
    for name, seconds in result["split"].items():
        lines.append(f"| {name} | {1e3 * seconds:.1f} | outside the call |")
    return "\n".join(lines) + "\n"


def environment(args: argparse.Namespace) -> dict[str, Any]:
    return {"emulated": _cuda.emulated(), "gpu": torch.cuda.get_device_name(0) if gpu() else None,
            "torch": None if torch is None else torch.__version__, "library": _cuda.library_report().get("detail"),
            "warmup": args.warmup, "reps": args.reps, "runs": args.runs, "python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results", help="folder of the JSON and markdown outputs")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="log2 of the element counts (24 26)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=20, help="calls between two CUDA events")
    p.add_argument("--runs", type=int, default=5, help="timed runs (the median is reported)")
    p.add_argument("--cpu-runs", type=int, default=3)
    p.add_argument("--cpu-max-log2", type=int, default=24, help="the CPU kernels at sizes up to 2^this")
    p.add_argument("--allreduce", action="store_true", help="the quantized_allreduce mode (under mpiexec)")
    p.add_argument("--allreduce-log2", type=int, default=None, help="2^this float32 (26)")
    p.add_argument("--allreduce-runs", type=int, default=3)
    args = p.parse_args(argv)
    small = not gpu()  # the emulation: a check of the script with small sizes
    args.sizes = args.sizes or ([12, 14] if small else [24, 26])
    args.allreduce_log2 = args.allreduce_log2 or (14 if small else 26)
    if small:
        args.reps, args.runs = min(args.reps, 2), min(args.runs, 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.allreduce:
        result = run_allreduce(args)
        if result is None:
            return 0
        stem, table = f"allreduce_P{result['ranks']}", allreduce_table(result)
    else:
        result = run_kernels(args)
        stem, table = "gpu_kernels", kernels_table(result)
    if result["emulated"] or not result["gpu"]:
        table = "EMULATED (no GPU): these numbers check the script, they measure nothing.\n\n" + table
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (out / f"{stem}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
