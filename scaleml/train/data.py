"""Datasets of the training driver and their sharding over ranks.

* ``digits``: scikit-learn's bundled 8x8 digits (1797 samples, 64 features
  scaled to [0, 1], 10 classes), split into train and test sets by a
  permutation drawn from the seed.
* ``synthetic``: regression (``y = X w* + noise``) or classification
  (``y = argmax(X W* + noise)``) data of any size and dimension, drawn in
  blocks of :data:`BLOCK` rows, each from a generator keyed by the seed and
  the block index: the data set is the same on every rank and every machine,
  and a rank materialises only the blocks of its shard.
* ``zipf-text``: synthetic text classification for the ``embedding-bag``
  model (:func:`zipf_text_dataset`): bags of token ids drawn from a Zipf
  distribution over a vocabulary of 10^5 (or more) tokens, a share of them
  from the hidden class of the label; drawn in blocks like ``synthetic``.
* a path to an ``.npz`` file with ``X``, ``y`` and optionally ``X_test``,
  ``y_test`` (without them the last ``test_fraction`` of a seeded permutation
  is the test set).

Every rank trains on a disjoint shard of ``floor(N / P)`` training samples
(the ``N mod P`` left over are not used) and evaluates a disjoint slice of the
test set; the metrics add the slices up.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["BLOCK", "Dataset", "Shard", "load_dataset", "shard", "zipf_text_dataset"]

BLOCK = 4096
"""Rows per independently seeded block of the synthetic data."""

STOP_WORDS = 100
"""``zipf-text``: the most frequent tokens, which belong to no class."""


@dataclass
class Dataset:
    """A dataset before sharding: the training rows come from ``train_rows(start, stop)``."""

    name: str
    features: int
    n_train: int
    n_test: int
    task: str
    """``"classification"`` or ``"regression"``."""
    classes: int
    """Number of classes inferred from the labels (0 for regression)."""
    train_rows: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    """(X, y) of the training samples at the given indices (sorted, in [0, n_train))."""
    test_rows: Callable[[int, int], tuple[np.ndarray, np.ndarray]]
    """(X, y) of the test samples in [start, stop)."""
    labels: np.ndarray | None = None
    """Every label, training and test, to check against the model (``None``: valid by construction)."""


@dataclass
class Shard:
    """One rank's part: its training samples and its slice of the test set."""

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_train_total: int
    """Training samples used over all ranks (``P * len(X)``)."""
    n_test_total: int


def _block_range(n: int, P: int, j: int) -> tuple[int, int]:
    """[start, stop) of part j of P near-equal contiguous parts of range(n)."""
    q, r = divmod(n, P)
    start = j * q + min(j, r)
    return start, start + q + (1 if j < r else 0)


def _from_arrays(name: str, X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                 task: str, seed: int) -> Dataset:
    X = np.ascontiguousarray(X, dtype=np.float32)
    X_test = np.ascontiguousarray(X_test, dtype=np.float32)
    # The shards are contiguous ranges of a seeded permutation (data files are often sorted by label).
    order = np.random.default_rng([int(seed), 0xDA7A]).permutation(X.shape[0])
    X, y = X[order], y[order]
    labels = np.concatenate([y.reshape(-1), y_test.reshape(-1)]).astype(np.float64)
    classes = 0
    finite = labels.size and np.isfinite(labels).all()
    if task == "classification" and finite and np.array_equal(labels, np.round(labels)) and labels.min() >= 0:
        classes = int(labels.max()) + 1
    return Dataset(name, X.shape[1], X.shape[0], X_test.shape[0], task, classes,
                   lambda idx: (X[idx], y[idx]), lambda a, b: (X_test[a:b], y_test[a:b]), labels)


def _split(X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    order = np.random.default_rng([int(seed), 0x5E17]).permutation(X.shape[0])
    n_test = int(round(test_fraction * X.shape[0]))
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - a dependency of requirements.txt
        raise ValueError("--dataset digits needs scikit-learn (pip install scikit-learn)") from exc
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    X.flags.writeable = False
    y = d.target.astype(np.int64)
    y.flags.writeable = False
    return X, y


def load_digits_dataset(seed: int, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's digits, features scaled to [0, 1], split by a permutation drawn from ``seed``."""
    X, y = _digits()  # loaded once per process
    return _from_arrays("digits", *_split(X, y, test_fraction, seed), "classification", seed)


def load_npz_dataset(path: str, seed: int, task: str, test_fraction: float = 0.2) -> Dataset:
    """A user's ``.npz`` with ``X`` (samples x features), ``y`` and optionally ``X_test``, ``y_test``."""
    if not os.path.isfile(path):
        raise ValueError(f"dataset file {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # zip, pickle and format errors alike: the file is not a readable .npz
        raise ValueError(f"cannot read dataset {path!r}: {type(exc).__name__}: {exc}") from None
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise ValueError(f"dataset {path!r} lacks {' and '.join(missing)} (it has {sorted(arrays)})")
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"dataset {path!r} must hold both X_test and y_test or neither")
    X, y = arrays["X"], arrays["y"]
    for k in ("X", "X_test"):
        a = arrays.get(k)
        if a is not None and (a.ndim != 2 or a.dtype.kind not in "fiub"):
            raise ValueError(f"{k} in {path!r} must be a numeric 2-D array (samples x features), "
                             f"got {a.dtype}{a.shape}")
    for k in ("y", "y_test"):
        a = arrays.get(k)
        if a is not None and (a.ndim != 1 or a.dtype.kind not in "fiub"):
            raise ValueError(f"{k} in {path!r} must be a numeric 1-D array, got {a.dtype}{a.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]} in {path!r}")
    if "X_test" in arrays:
        X_test, y_test = arrays["X_test"], arrays["y_test"]
        if X_test.shape[1] != X.shape[1] or X_test.shape[0] != y_test.shape[0]:
            raise ValueError(f"X_test {X_test.shape} / y_test {y_test.shape} do not match X {X.shape} "
                             f"in {path!r}")
    else:
        X, y, X_test, y_test = _split(X, y, test_fraction, seed)
    if not (np.isfinite(X).all() and np.isfinite(X_test).all()):
        raise ValueError(f"the features in {path!r} contain NaN or Inf")
    if task == "regression":
        y, y_test = y.astype(np.float32), y_test.astype(np.float32)
    return _from_arrays(os.path.basename(path), X, y, X_test, y_test, task, seed)


def synthetic_dataset(seed: int, samples: int, features: int, task: str, classes: int,
                      test_fraction: float = 0.2, noise: float = 0.1) -> Dataset:
    """Synthetic regression or classification data, deterministic in ``seed``, of any size.

    Row ``i`` belongs to block ``i // BLOCK``, drawn from PCG64 keyed by
    ``(seed, block)``: features standard normal, and the target of a hidden
    model (``w*`` or ``W*``, also drawn from the seed) plus Gaussian noise.
    The first ``samples`` rows are the training set, the next
    ``round(test_fraction * samples)`` the test set.
    """
    if samples < 1 or features < 1:
        raise ValueError(f"synthetic data needs samples >= 1 and features >= 1, got {samples} and {features}")
    if task == "classification" and classes < 2:
        raise ValueError(f"synthetic classification needs at least 2 classes, got {classes}")
    n_test = max(int(round(test_fraction * samples)), 1)
    hidden = np.random.default_rng([int(seed), 0x1D, 0]).standard_normal(
        (features, classes if task == "classification" else 1)) / np.sqrt(features)
    # Scale the classification logits so that the classes are learnable but not separable by a margin.
    scale = 3.0 if task == "classification" else 1.0

    def block(b: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([int(seed), 0x1D, b + 1])
        rows = min(BLOCK, samples + n_test - b * BLOCK)
        X = rng.standard_normal((rows, features)).astype(np.float32)
        t = scale * (X.astype(np.float64) @ hidden) + noise * rng.standard_normal((rows, hidden.shape[1]))
        y = t.argmax(axis=1).astype(np.int64) if task == "classification" else t[:, 0].astype(np.float32)
        return X, y

    empty = (np.zeros((0, features), np.float32), np.zeros(0, np.int64 if task == "classification" else np.float32))
    train_rows, test_rows = _blocked_rows(block, empty, samples)
    return Dataset("synthetic", features, samples, n_test, task, classes if task == "classification" else 0,
                   train_rows, test_rows)


def _blocked_rows(block: Callable[[int], tuple[np.ndarray, np.ndarray]], empty: tuple[np.ndarray, np.ndarray],
                  samples: int) -> tuple[Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                                         Callable[[int, int], tuple[np.ndarray, np.ndarray]]]:
    """A Dataset's ``train_rows`` and ``test_rows`` over rows drawn in blocks of BLOCK (``block(b)``): the first
    ``samples`` rows are the training set, the rest the test set; ``empty`` is what no rows are."""
    def rows(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        if stop <= start:
            return empty
        parts = [block(b) for b in range(start // BLOCK, (stop - 1) // BLOCK + 1)]
        X = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        offset = (start // BLOCK) * BLOCK
        return X[start - offset:stop - offset], y[start - offset:stop - offset]

    def train_rows(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if idx.size == 0:
            return empty
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        X, y = rows(lo, hi)
        return X[idx - lo], y[idx - lo]

    return train_rows, lambda a, b: rows(samples + a, samples + b)


@functools.lru_cache(maxsize=2)
def _zipf_cdf(vocab: int, exponent: float) -> np.ndarray:
    """Cumulative probabilities of the token ranks 1..vocab under Zipf's law ``p(k) ~ k^-exponent``."""
    cdf = np.cumsum(np.arange(1, vocab + 1, dtype=np.float64) ** -exponent)
    cdf /= cdf[-1]
    cdf.flags.writeable = False
    return cdf


def zipf_text_dataset(seed: int, samples: int, vocab: int, bag_length: int, classes: int, *,
                      exponent: float = 1.1, topic: float = 0.25, test_fraction: float = 0.2) -> Dataset:
    """Synthetic text classification: Zipf-distributed bags of token ids and a label a bag model can learn.

    Every token but the :data:`STOP_WORDS` most frequent has a hidden class
    (uniform, from the seed). A sample draws its label uniformly, then a bag
    of ``uniform[ceil(bag_length / 2), bag_length]`` tokens: each token is
    drawn, by rank, from Zipf's law (``p(k) ~ k^-exponent``, ``k = 1..vocab``),
    except that with probability ``topic`` it is drawn from Zipf's law over
    the label's own tokens. A seeded permutation maps ranks to ids, so frequent
    tokens lie anywhere in the embedding matrix, and ``-1`` pads each row to
    ``bag_length``. Token frequencies thus stay Zipf's (the topic draws
    reweight the classes' tokens by about ``1 + topic``), and the Bayes
    classifier adds one log-likelihood ratio per token of the bag: exactly a
    sum of per-token vectors, which an embedding bag represents. What is left
    to chance is the bags with few or rare topic tokens.

    Rows are drawn in blocks of :data:`BLOCK` from PCG64 keyed by ``(seed,
    block)``, as in :func:`synthetic_dataset`: the data set is the same on
    every rank, which materialises only its shard. The first ``samples`` rows
    are the training set, the next ``round(test_fraction * samples)`` the test
    set.

    Parameters
    ----------
    seed : int
        Seed of the hidden classes, the id permutation and the rows.
    samples : int
        Training samples.
    vocab : int
        Number of token ids (> :data:`STOP_WORDS` leaves every class some tokens).
    bag_length : int
        Width of a row: the largest bag.
    classes : int
        Number of classes (>= 2).
    exponent : float
        Zipf exponent (> 0).
    topic : float
        Probability that a token is drawn from the label's tokens, in [0, 1].
    test_fraction : float
        Test samples per training sample.

    Returns
    -------
    Dataset
        ``features`` is ``bag_length``; rows of ``X`` are int32 token ids.
    """
    if samples < 1 or bag_length < 1:
        raise ValueError(f"zipf-text needs samples and bag length >= 1, got {samples} and {bag_length}")
    if classes < 2:
        raise ValueError(f"zipf-text needs at least 2 classes, got {classes}")
    if vocab < STOP_WORDS + classes:
        raise ValueError(f"zipf-text needs a vocabulary of at least {STOP_WORDS + classes} tokens ({STOP_WORDS} stop "
                         f"words and one per class), got {vocab}")
    if not (exponent > 0 and np.isfinite(exponent)) or not 0 <= topic <= 1:
        raise ValueError(f"zipf-text needs an exponent > 0 and a topic share in [0, 1], got {exponent} and {topic}")
    n_test = max(int(round(test_fraction * samples)), 1)
    cdf = _zipf_cdf(int(vocab), float(exponent))
    hidden = np.random.default_rng([int(seed), 0x21F, 0])
    id_of_rank = hidden.permutation(vocab).astype(np.int32)
    class_of_rank = hidden.integers(0, classes, vocab)
    class_of_rank[:STOP_WORDS] = -1
    mass = np.diff(cdf, prepend=0.0)
    class_ranks = [np.flatnonzero(class_of_rank == c) for c in range(classes)]
    class_cdfs = [np.cumsum(mass[r]) / mass[r].sum() for r in class_ranks]
    shortest = (bag_length + 1) // 2

    def block(b: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([int(seed), 0x21F, b + 1])
        rows = min(BLOCK, samples + n_test - b * BLOCK)
        y = rng.integers(0, classes, rows)
        lengths = rng.integers(shortest, bag_length + 1, rows)
        ranks = np.searchsorted(cdf, rng.random((rows, bag_length)), side="right")
        from_topic = rng.random((rows, bag_length)) < topic
        u = rng.random((rows, bag_length))
        for c in range(classes):
            chosen = from_topic & (y == c)[:, None]
            at = np.minimum(np.searchsorted(class_cdfs[c], u[chosen], side="right"), class_ranks[c].size - 1)
            ranks[chosen] = class_ranks[c][at]
        X = id_of_rank[np.minimum(ranks, vocab - 1)]
        X[np.arange(bag_length)[None, :] >= lengths[:, None]] = -1
        return X, y.astype(np.int64)

    train_rows, test_rows = _blocked_rows(block, (np.zeros((0, bag_length), np.int32), np.zeros(0, np.int64)),
                                          samples)
    return Dataset("zipf-text", bag_length, samples, n_test, "classification", classes, train_rows, test_rows)


def load_dataset(spec: str, *, seed: int, task: str, classes: int = 10, samples: int = 10000,
                 features: int = 100, test_fraction: float = 0.2, vocab: int = 100000, bag_length: int = 20,
                 zipf_exponent: float = 1.1) -> Dataset:
    """Load ``digits``, ``synthetic``, ``zipf-text`` or the ``.npz`` file at a path (see the module docstring).

    Parameters
    ----------
    spec : str
        ``"digits"``, ``"synthetic"``, ``"zipf-text"`` or a path ending in ``.npz``.
    seed : int
        Seed of the train/test split, the order of the shards and the synthetic data.
    task : {"classification", "regression"}
        From the model: the kind of synthetic data, and whether labels stay floats.
    classes : int
        Number of synthetic classes (2 for logistic regression).
    samples, features : int
        Size of the synthetic training set and its dimension (``zipf-text``: ``samples`` and ``classes`` only).
    test_fraction : float
        Share of the data held out when it has no test set (synthetic: test samples per training sample).
    vocab, bag_length : int
        ``zipf-text``: number of token ids, and the largest bag.
    zipf_exponent : float
        ``zipf-text``: exponent of Zipf's law.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        For an unknown spec, or a file that is missing, unreadable or malformed.
    """
    if spec == "digits":
        return load_digits_dataset(seed, test_fraction)
    if spec == "synthetic":
        return synthetic_dataset(seed, samples, features, task, classes, test_fraction)
    if spec == "zipf-text":
        return zipf_text_dataset(seed, samples, vocab, bag_length, classes, exponent=zipf_exponent,
                                 test_fraction=test_fraction)
    if spec.endswith(".npz"):
        return load_npz_dataset(spec, seed, task, test_fraction)
    raise ValueError(f"unknown dataset {spec!r}; expected 'digits', 'synthetic', 'zipf-text' or the path of an .npz "
                     "file")


def shard(data: Dataset, rank: int, size: int) -> Shard:
    """This rank's disjoint part of ``data``.

    Parameters
    ----------
    data : Dataset
        The whole data set (the same on every rank).
    rank, size : int
        This rank and the number of ranks.

    Returns
    -------
    Shard
        Training samples ``[rank * m, (rank + 1) * m)`` for ``m = floor(n_train / size)`` (of the seeded
        order) and a contiguous slice of the test set (the slices cover it).

    Raises
    ------
    ValueError
        When there are fewer training samples than ranks.
    """
    per_rank = data.n_train // size
    if per_rank < 1:
        raise ValueError(f"{data.n_train} training samples cannot be sharded over {size} ranks (every rank needs "
                         "at least one)")
    X, y = data.train_rows(np.arange(rank * per_rank, (rank + 1) * per_rank))
    a, b = _block_range(data.n_test, size, rank)
    X_test, y_test = data.test_rows(a, b)
    return Shard(X, y, X_test, y_test, per_rank * size, data.n_test)
