"""The index check of ``sparse_allreduce``'s input (not a timed test): ``scaleml_indices_increasing`` (one C pass
that the indices strictly increase within [0, n)) on 2^22 sorted indices of each integer type, at one rank. Every
run is printed, each the median of ``--calls`` calls in milliseconds; compare builds by running this script with
``PYTHONPATH`` set to each tree in turns.

    PYTHONPATH=$PWD python bench/index_check.py [--log2n 22] [--runs 5] [--calls 21]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from scaleml._native import ffi, lib

TYPES = (np.int64, np.uint64, np.int32, np.uint32)


def median_ms(idx: np.ndarray, bound: int, calls: int) -> float:
    """Median time of ``calls`` checks of ``idx``, in milliseconds."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        ok = lib.scaleml_indices_increasing(ffi.from_buffer(idx), idx.size, idx.itemsize, idx.dtype.kind == "i",
                                            bound)
        times.append(time.perf_counter() - t0)
        assert ok
    return float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log2n", type=int, default=22)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=21)
    args = parser.parse_args()
    n = 1 << args.log2n
    print(f"# n = 2^{args.log2n} sorted indices, median of {args.calls} calls per run (ms)")
    for dtype in TYPES:
        idx = np.arange(n, dtype=dtype)
        runs = [median_ms(idx, n, args.calls) for _ in range(args.runs)]
        print(f"{np.dtype(dtype).name:>7}: " + " ".join(f"{t:.3f}" for t in runs))


if __name__ == "__main__":
    main()
