"""The embedding-bag model and the zipf-text data without mpiexec: gradients, sparsity, determinism, learnability."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from scaleml.train import TrainConfig, make_model, shard, train
from scaleml.train.cli import parse_args
from scaleml.train.data import STOP_WORDS, load_dataset, zipf_text_dataset


def _bags(vocab: int, n: int = 6, width: int = 5, seed: int = 2) -> np.ndarray:
    """Bags of 0 to ``width`` ids padded with -1, with repeated ids; ids >= vocab // 2 never occur."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, vocab // 2, (n, width)).astype(np.int32)
    X[:, 1] = X[:, 0]  # a token twice in one bag
    for i, length in enumerate(rng.integers(0, width + 1, n)):
        X[i, length:] = -1
    X[0, :] = -1  # an empty bag
    return X


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_backward_matches_finite_differences_and_untouched_rows_are_exactly_zero(mode):
    vocab, classes = 12, 3
    model = make_model("embedding-bag", 0, classes, (4, 3), vocab=vocab, embed_dim=3, bag_mode=mode)
    X = _bags(vocab)
    y = np.random.default_rng(0).integers(0, classes, X.shape[0])
    params = [p.astype(np.float64) + 0.3 * np.random.default_rng(i).standard_normal(p.shape)
              for i, p in enumerate(model.init(seed=3))]
    params[2] += 2.0  # hidden biases: every ReLU active, so every touched row gets a non-zero gradient
    params[4] += 2.0
    loss, grads = model.loss_and_grads(params, X, y)
    assert [g.shape for g in grads] == [p.shape for p in params] and grads[0].shape == (vocab, 3)
    touched = np.zeros(vocab, bool)
    touched[X[X >= 0]] = True
    assert np.all(grads[0][~touched] == 0.0) and np.all(np.signbit(grads[0][~touched]) == 0)
    assert np.all(np.any(grads[0][touched] != 0, axis=1))
    h = 1e-6
    for p, g in zip(params, grads):
        numeric = np.empty_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            up, _ = model.loss_and_grads(params, X, y)
            p[i] = old - h
            down, _ = model.loss_and_grads(params, X, y)
            p[i] = old
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-8)
    # the dense one-hot formulation: pooled = (C / lengths) E
    C = np.zeros((X.shape[0], vocab))
    np.add.at(C, (np.nonzero(X >= 0)[0], X[X >= 0]), 1.0)
    if mode == "mean":
        C /= np.maximum(C.sum(axis=1, keepdims=True), 1)
    np.testing.assert_allclose(model._pool(params[0], X)[0], C @ params[0], rtol=1e-12, atol=1e-15)
    assert np.isfinite(loss)


def test_float32_gradient_and_evaluation_in_chunks():
    model = make_model("embedding-bag", 0, 4, (8,), vocab=50, embed_dim=6)
    params = model.init(seed=1)
    assert params[0].dtype == np.float32 and params[0].shape == (50, 6)
    X, y = _bags(50, n=40, width=7), np.arange(40) % 4
    _, grads = model.loss_and_grads(params, X, y)
    assert all(g.dtype == np.float32 for g in grads)
    whole = model.evaluate(params, X, y)
    model.eval_rows = 7
    chunked = model.evaluate(params, X, y)
    assert whole["count"] == chunked["count"] == 40 and whole["correct"] == chunked["correct"]
    assert whole["loss"] == pytest.approx(chunked["loss"], rel=1e-12)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.loss_and_grads(params, np.full((2, 3), 50, np.int32), y[:2])
    with pytest.raises(ValueError, match="integer array of token ids"):
        model.forward(params, X.astype(np.float32))


def test_zipf_text_is_deterministic_by_seed_and_sharded_like_the_others():
    a = zipf_text_dataset(4, 9000, 5000, 12, 5)
    b = load_dataset("zipf-text", seed=4, task="classification", classes=5, samples=9000, vocab=5000, bag_length=12)
    c = zipf_text_dataset(5, 9000, 5000, 12, 5)
    Xa, ya = a.train_rows(np.arange(9000))
    Xb, yb = b.train_rows(np.arange(9000))
    Xc, _ = c.train_rows(np.arange(9000))
    assert Xa.dtype == np.int32 and Xa.shape == (9000, 12) and a.features == 12 and a.classes == 5
    assert np.array_equal(Xa, Xb) and np.array_equal(ya, yb) and not np.array_equal(Xa, Xc)
    lengths = (Xa >= 0).sum(axis=1)
    assert lengths.min() == 6 and lengths.max() == 12
    assert np.all((Xa >= 0) == (np.arange(12) < lengths[:, None]))  # padding only at the end
    assert set(np.unique(ya)) == set(range(5))
    parts = [shard(a, r, 3) for r in range(3)]  # blocks of 4096: shards cross block edges
    assert np.array_equal(np.concatenate([p.X for p in parts]), Xa)
    assert np.array_equal(np.concatenate([p.X_test for p in parts]), a.test_rows(0, a.n_test)[0])


def test_zipf_text_token_frequencies_follow_zipf():
    data = zipf_text_dataset(0, 20000, 100000, 20, 10)
    X, _ = data.train_rows(np.arange(20000))
    counts = np.sort(np.bincount(X[X >= 0], minlength=100000))[::-1]
    # the stop words are drawn from the background only, a share 1 - topic of the tokens
    ranks = np.arange(1, STOP_WORDS + 1)
    p = ranks ** -1.1 / (np.arange(1, 100001) ** -1.1).sum()
    np.testing.assert_allclose(counts[:STOP_WORDS][:10] / counts.sum(), 0.75 * p[:10], rtol=0.1)
    slope = np.polyfit(np.log(np.arange(1, 1001)), np.log(counts[:1000]), 1)[0]
    assert -1.25 < slope < -0.95, slope
    assert (counts > 0).sum() > 20000  # a long tail of rare tokens


def test_an_embedding_bag_learns_zipf_text():
    config = TrainConfig(dataset="zipf-text", model="embedding-bag", vocab=5000, embed_dim=16, hidden=[32],
                         bag_mode="sum",
                         synthetic_samples=6000, synthetic_classes=4, lr=0.3, epochs=3, quiet=True, check_every=0)
    result = train(config, MPI.COMM_SELF)
    accs = [e["test_accuracy"] for e in result.history]
    assert accs[-1] > 0.5, accs  # chance: 0.25
    assert result.history[-1]["grad_density"] is None  # nothing compressed on one rank with "none"


def test_cli_flags_and_mismatched_model_and_data():
    config = parse_args(["--dataset", "zipf-text", "--model", "embedding-bag", "--vocab", "100000", "--embed-dim",
                         "32", "--bag-length", "30", "--bag-mode", "sum"])
    assert (config.vocab, config.embed_dim, config.bag_length, config.bag_mode) == (100000, 32, 30, "sum")
    assert config.identity()["vocab"] == 100000 and parse_args([]).identity()["vocab"] is None
    for argv in (["--dataset", "zipf-text", "--model", "mlp"], ["--dataset", "digits", "--model", "embedding-bag"]):
        with pytest.raises(ValueError, match="embedding-bag trains on --dataset zipf-text"):
            parse_args(argv)
    with pytest.raises(ValueError, match="vocab"):
        parse_args(["--dataset", "zipf-text", "--model", "embedding-bag", "--vocab", "50"])
