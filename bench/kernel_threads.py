"""The C kernels at 1 and 2 threads (not a timed test): QSGD 4-bit encode, QSGD decode-and-add and TopK 1%
selection of 2^24 float32 at one rank, every run printed; 1 thread is measured first and again last (an A/A
control: the gap between the two is the noise of the machine).

The thread counts take turns in every run (1, 2, 1, then 1, 2, 1 again...), so a spell in which the host
slows the second core slows every pass alike instead of one pass. A last pass, "pair", runs two 1-thread
calls at once on separate copies of the data, one per Python thread: what two cores of this machine give
together at that moment, with no split to pay for. ``2 * (1 thread) / pair`` is then the most any split over
two threads could reach, printed as the ceiling next to the 2-thread speedup. (CPU time the hypervisor stole
shows in /proc/stat as ``steal``, printed too; a busy sibling hyperthread on the host does not show there,
but does in the pair.)

    PYTHONPATH=$PWD python bench/kernel_threads.py [--log2n 24] [--runs 7] [--threads 1 2 1]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from scaleml._native import ffi, lib

_KEEP: list[np.ndarray] = []
"""The arrays behind the kernels' pointers (a cast pointer does not keep its array alive)."""


def kernels(n: int) -> dict[str, Callable[[], int]]:
    """The three kernels over one input, each a call returning the C status."""
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    xp = ffi.cast("void *", ffi.from_buffer(x))
    bits, bucket = 4, 512
    size = int(lib.scaleml_qsgd_max_bytes(n, bits, bucket, lib.SCALEML_QSGD_FIXED))
    payload = np.empty(size, np.uint8)
    pp = ffi.cast("uint8_t *", ffi.from_buffer(payload))
    written = ffi.new("size_t *")
    key = lib.scaleml_rng_key(1, 0, 0, 0)
    assert lib.scaleml_qsgd_encode(xp, 4, n, bits, bucket, 0, 0, key, pp, size, written) == 0
    acc = np.zeros(n, np.float32)
    ap = ffi.cast("void *", ffi.from_buffer(acc))
    k = n // 100
    topk_size = int(lib.scaleml_topk_bytes(k + 4096, 4))
    topk_out = np.empty(topk_size, np.uint8)
    tp = ffi.cast("uint8_t *", ffi.from_buffer(topk_out))
    _KEEP.extend([x, payload, acc, topk_out])
    return {
        "qsgd4 encode": lambda: lib.scaleml_qsgd_encode(xp, 4, n, bits, bucket, 0, 0, key, pp, size, written),
        "qsgd4 decode-and-add": lambda: lib.scaleml_qsgd_decode_add(pp, size, n, bits, bucket, ap, 4),
        "topk 1% select": lambda: lib.scaleml_topk_encode(xp, 4, n, k, 0, 0, key, tp, topk_size, written, ffi.NULL),
    }


def steal_seconds() -> float | None:
    """CPU time the hypervisor took from this machine's CPUs so far (/proc/stat's ``steal``), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2n", type=int, default=24)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 1])
    args = parser.parse_args()
    n = 1 << args.log2n
    calls, copies = kernels(n), kernels(n)  # the pair's second call works on its own copy
    passes = [*(str(t) for t in args.threads), "pair"]
    times: dict[tuple[str, int], list[float]] = {(name, p): [] for name in calls for p in range(len(passes))}
    used: dict[tuple[str, int], int] = {}
    for call in calls.values():
        for threads in set(args.threads):
            lib.scaleml_set_num_threads(threads)
            assert call() == 0  # warm-up (and the OpenMP team of that size)
    stolen = steal_seconds()
    start = time.perf_counter()
    with ThreadPoolExecutor(1) as other:
        for _ in range(args.runs):
            for name, call in calls.items():
                for pass_no, threads in enumerate([*args.threads, 1]):
                    lib.scaleml_set_num_threads(threads)
                    t0 = time.perf_counter()
                    second = other.submit(copies[name]) if passes[pass_no] == "pair" else None
                    rc = call()
                    if second is not None:
                        rc |= second.result()
                    times[(name, pass_no)].append((time.perf_counter() - t0) * 1e3)
                    assert rc == 0
                    used[(name, pass_no)] = lib.scaleml_last_num_threads()
    elapsed = time.perf_counter() - start
    print(f"n = 2^{args.log2n} float32, {args.runs} runs per kernel and pass, the passes in turns, milliseconds")
    for name in calls:
        for pass_no, label in enumerate(passes):
            t = times[(name, pass_no)]
            used_now = used[(name, pass_no)]
            what = "two 1-thread calls at once" if label == "pair" else f"threads {label} (used {used_now})"
            print(f"pass {pass_no} {what} {name:<22}" + " ".join(f"{x:7.2f}" for x in t)
                  + f"   median {np.median(t):7.2f}")
    if stolen is not None:
        print(f"stolen by the hypervisor: {steal_seconds() - stolen:.2f} s of CPU time in {elapsed:.2f} s")
    print("\nspeedup of each pass over pass 0 (medians); ceiling: 2 x pass 0 / pair")
    for name in calls:
        base = np.median(times[(name, 0)])
        print(f"  {name:<22}" + "  ".join(f"pass {p} ({args.threads[p]} thr): {base / np.median(times[(name, p)]):.2f}x"
                                          for p in range(1, len(args.threads)))
              + f"  ceiling: {2 * base / np.median(times[(name, len(args.threads))]):.2f}x")


if __name__ == "__main__":
    main()
