"""The drop-in's dense scan (not a timed test): count then extract the non-zeros (two passes, what the drop-in
did before; on dense data the count alone, as a sparse algorithm is then not run) against the one-pass scan
that stores them as it counts (``scan_nonzeros``, into fresh arrays, and into memory kept between calls as
the drop-in does), on 2^22 float32 at one rank and several densities. The
two passes are timed first and again last: an A/A control whose gap is the noise of the machine. Every run
is printed; the table gives the median of each. Both use today's extraction kernel (the bit-mask walk): the
gain over the code before it is larger.

    PYTHONPATH=$PWD python bench/dense_scan.py [--log2n 22] [--runs 5] [--calls 21] [--threads 1] [--only M ...]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from scaleml._native import lib
from scaleml.dense_scan import ScanScratch, count_nonzeros_signed, extract_nonzeros, scan_nonzeros

DENSITIES = (0.001, 0.01, 0.1, 1.0)


def median_ms(call: Callable[[], object], calls: int) -> float:
    """Median time of ``calls`` calls, in milliseconds."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def methods(x: np.ndarray) -> dict[str, Callable[[], object]]:
    """The two ways to count and extract ``x``'s non-zeros, with the room the drop-in gives the scan (n/4
    where they fit, n/256 on dense data)."""
    n, idx_dtype = x.size, np.dtype(np.uint32)

    sparse = np.count_nonzero(x) <= n // 4

    def two_passes() -> object:
        nnz, _ = count_nonzeros_signed(x)
        return extract_nonzeros(x, nnz, idx_dtype) if sparse else None

    room = n // 4 if sparse else n // 256
    kept = ScanScratch()
    return {"two_passes": two_passes, "one_pass": lambda: scan_nonzeros(x, room, idx_dtype),
            "one_pass_kept": lambda: scan_nonzeros(x, room, idx_dtype, kept), "two_passes_again": two_passes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log2n", type=int, default=22)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1, help="the kernels' threads (SCALEML_NUM_THREADS)")
    parser.add_argument("--only", nargs="+", metavar="METHOD",
                        help="time these methods alone (one_pass one_pass_kept: whether fresh arrays cost page "
                             "faults depends on what else the process allocates); no table")
    args = parser.parse_args()
    lib.scaleml_set_num_threads(args.threads)
    n = 1 << args.log2n
    rng = np.random.default_rng(0)
    print(f"# n = 2^{args.log2n} float32, {args.threads} thread(s), median of {args.calls} calls per run (ms)")
    table = []
    for density in DENSITIES:
        x = np.where(rng.random(n) < density, rng.standard_normal(n) + 0.1, 0).astype(np.float32)
        runs: dict[str, list[float]] = {name: [] for name in methods(x) if not args.only or name in args.only}
        for _ in range(args.runs):
            for name, call in methods(x).items():
                if name in runs:
                    runs[name].append(median_ms(call, args.calls))
        for name, times in runs.items():
            print(f"density {density}: {name:17s}", " ".join(f"{t:.3f}" for t in times))
        table.append((density, *(float(np.median(runs[name])) for name in runs)))
    if args.only:
        return
    print("\n| density | two passes (ms) | one pass (ms) | one pass, kept memory (ms) | speedup (kept) "
          "| A/A (two passes again) |")
    print("|---|---|---|---|---|---|")
    for density, first, one, kept, again in table:
        print(f"| {density} | {first:.3f} | {one:.3f} | {kept:.3f} | {first / kept:.2f}x | {first / again:.2f}x |")


if __name__ == "__main__":
    main()
