"""``scaleml-bench model``: the cost model's predicted time of every algorithm, and the choice of ``auto``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import numpy as np

from .. import cost_model
from ..sparse import index_dtype


def model(args: argparse.Namespace) -> int:
    """Predictions of every algorithm, and the choice of auto."""
    params = cost_model.get_params()
    overrides = {k: getattr(args, k) for k in ("alpha", "beta", "gamma", "delta") if getattr(args, k) is not None}
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
