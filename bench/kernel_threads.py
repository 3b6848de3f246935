"""The C kernels at 1 and 2 threads (not a timed test): QSGD 4-bit encode, QSGD decode-and-add and TopK 1%
selection of 2^24 float32 at one rank, every run printed; 1 thread is measured first and again last (an A/A
control: the gap between the two is the noise of the machine).

    PYTHONPATH=$PWD python bench/kernel_threads.py [--log2n 24] [--runs 7] [--threads 1 2 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2n", type=int, default=24)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 1])
    args = parser.parse_args()
    n = 1 << args.log2n
    calls = kernels(n)
    best: dict[tuple[str, int], list[float]] = {}
    print(f"n = 2^{args.log2n} float32, {args.runs} runs per kernel and thread count, milliseconds")
    for pass_no, threads in enumerate(args.threads):
        lib.scaleml_set_num_threads(threads)
        for name, call in calls.items():
            assert call() == 0  # warm-up
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                rc = call()
                times.append((time.perf_counter() - t0) * 1e3)
                assert rc == 0
            used = lib.scaleml_last_num_threads()
            best[(name, pass_no)] = times
            print(f"pass {pass_no} threads {threads} (used {used}) {name:<22}"
                  + " ".join(f"{t:7.2f}" for t in times) + f"   median {np.median(times):7.2f}")
    print("\nspeedup of each pass over pass 0 (medians)")
    for name in calls:
        base = np.median(best[(name, 0)])
        print(f"  {name:<22}" + "  ".join(f"pass {p} ({args.threads[p]} thr): {base / np.median(best[(name, p)]):.2f}x"
                                          for p in range(1, len(args.threads))))


if __name__ == "__main__":
    main()
