"""Reproducible sparse inputs for tests and benchmarks."""

from __future__ import annotations

import numpy as np

PATTERNS = ("overlap", "disjoint", "identical")


def random_sparse(n: int, density: float, pattern: str, dtype, rank: int, size: int,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """This rank's (indices, values) of a random sparse vector.

    Parameters
    ----------
    n : int
        Dimension.
    density : float
        Target fraction of non-zeros. Ranks get different counts (rank r holds
        about ``n * density * (0.5 + (r + 1) / size)``) so no code path can
        assume equal nnz; ``density >= 1`` gives every rank all n entries.
    pattern : {"overlap", "disjoint", "identical"}
        ``overlap``: every rank draws from one shared pool of 2k positions, so
        indices partly coincide; ``disjoint``: ranks draw from disjoint residue
        classes of a shared permutation; ``identical``: all ranks use the same
        indices.
    dtype : numpy dtype of the values.
    rank, size : int
        This rank and the number of ranks.
    seed : int
        Same seed on every rank gives one consistent global input.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    rng = np.random.default_rng([seed, rank])
    shared = np.random.default_rng([seed, 10**6])
    k = n if density >= 1.0 else min(n, int(round(n * density * (0.5 + (rank + 1) / size))))
    if pattern == "identical":
        idx = shared.permutation(n)[: min(n, int(round(n * density)))]
    elif pattern == "disjoint":
        own = shared.permutation(n)[rank::size]
        idx = own[: min(k, own.size)]
    else:
        pool = shared.permutation(n)[: min(n, 2 * k)]
        idx = rng.permutation(pool)[:k]
    idx = np.sort(idx)
    return idx.astype(np.int64), rng.standard_normal(idx.size).astype(dtype)
