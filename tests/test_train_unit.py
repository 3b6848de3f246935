"""scaleml.train without mpiexec: gradients against finite differences, optimizers, bucketing, arguments, data."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from scaleml.train import (
    SGD,
    Adam,
    GradientReducer,
    Momentum,
    TrainConfig,
    load_dataset,
    make_model,
    parse_compression,
    plan_buckets,
    shard,
)
from scaleml.train.cli import ArgumentError, HelpRequested, parse_args
from scaleml.train.data import synthetic_dataset

# ---- models: backward against central finite differences (float64 copies) ----------------------------------

MODEL_CASES = [
    ("linear", 0, ()),
    ("logistic", 2, ()),
    ("softmax", 4, ()),
    ("mlp", 3, (6, 5)),
]


def _batch(name: str, classes: int, n: int = 7, d: int = 5, seed: int = 1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = rng.standard_normal(n) if name == "linear" else rng.integers(0, classes, n)
    return X, y


@pytest.mark.parametrize("name,classes,hidden", MODEL_CASES)
def test_backward_matches_finite_differences(name, classes, hidden):
    X, y = _batch(name, classes)
    model = make_model(name, X.shape[1], classes, hidden)
    # float64 copies of a float32 initialisation, moved off zero so ReLUs and biases are exercised
    params = [p.astype(np.float64) + 0.3 * np.random.default_rng(i).standard_normal(p.shape)
              for i, p in enumerate(model.init(seed=3))]
    loss, grads = model.loss_and_grads(params, X, y)
    assert len(grads) == len(params)
    h = 1e-6
    for p, g in zip(params, grads):
        assert g.shape == p.shape and g.dtype == np.float64
        numeric = np.empty_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            up, _ = model.loss_and_grads(params, X, y)
            p[i] = old - h
            down, _ = model.loss_and_grads(params, X, y)
            p[i] = old
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-7)
    assert np.isfinite(loss) and loss > 0


@pytest.mark.parametrize("name,classes,hidden", MODEL_CASES)
def test_float32_training_arithmetic_and_deterministic_init(name, classes, hidden):
    X, y = _batch(name, classes)
    model = make_model(name, X.shape[1], classes, hidden)
    a, b, c = model.init(seed=5), model.init(seed=5), model.init(seed=6)
    assert all(p.dtype == np.float32 for p in a)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert any(not np.array_equal(p, q) for p, q in zip(a, c))
    loss, grads = model.loss_and_grads(a, X.astype(np.float32), y)
    assert all(g.dtype == np.float32 for g in grads)
    sums = model.evaluate(a, X.astype(np.float32), y)
    assert sums["count"] == X.shape[0]
    assert sums["loss"] / sums["count"] == pytest.approx(loss, rel=1e-4)


def test_label_checks():
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*logistic regression is binary"):
        make_model("logistic", 3).check_labels(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\]"):
        make_model("softmax", 3, 4).check_labels(np.array([0, -1]))
    with pytest.raises(ValueError, match="integer"):
        make_model("softmax", 3, 4).check_labels(np.array([0.5, 1]))
    make_model("linear", 3).check_labels(np.array([0.5, -7.25]))  # any finite target
    with pytest.raises(ValueError, match="NaN"):
        make_model("linear", 3).check_labels(np.array([0.5, np.nan]))


# ---- optimizers ------------------------------------------------------------------------------------------

def _problem(seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(5)]
    return params, grads


def test_sgd_and_momentum_follow_their_formulas():
    params, grads = _problem()
    p_sgd = [p.copy() for p in params]
    p_mom = [p.copy() for p in params]
    sgd, mom = SGD(0.1), Momentum(0.1, momentum=0.9)
    v = [np.zeros_like(p) for p in params]
    ref = [p.astype(np.float64) for p in params]
    for gs in grads:
        sgd.step(p_sgd, gs)
        mom.step(p_mom, gs)
        for i, g in enumerate(gs):
            v[i] = 0.9 * v[i] + g.astype(np.float64)
            ref[i] -= 0.1 * v[i]
    expected_sgd = [p - 0.1 * sum(gs[i] for gs in grads) for i, p in enumerate(params)]
    for got, want in zip(p_sgd, expected_sgd):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(p_mom, ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert sgd.step_count == mom.step_count == len(grads)


def test_adam_matches_a_float64_reference():
    params, grads = _problem(1)
    ps = [p.copy() for p in params]
    opt = Adam(0.01)
    m = [np.zeros(p.shape) for p in params]
    v = [np.zeros(p.shape) for p in params]
    ref = [p.astype(np.float64) for p in params]
    for t, gs in enumerate(grads, start=1):
        opt.step(ps, gs)
        for i, g in enumerate(gs):
            g = g.astype(np.float64)
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            ref[i] -= 0.01 * (m[i] / (1 - 0.9 ** t)) / (np.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-8)
    for got, want in zip(ps, ref):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: SGD(0.1), lambda: Momentum(0.1), lambda: Adam(0.01)])
def test_optimizer_state_dict_continues_exactly(make):
    params, grads = _problem(2)
    straight, opt = [p.copy() for p in params], make()
    for gs in grads:
        opt.step(straight, gs)
    first, opt1 = [p.copy() for p in params], make()
    for gs in grads[:2]:
        opt1.step(first, gs)
    state = {k: v.copy() for k, v in opt1.state_dict().items()}
    resumed, opt2 = [p.copy() for p in first], make()
    opt2.load_state_dict(state, resumed)
    for gs in grads[2:]:
        opt2.step(resumed, gs)
    for a, b in zip(straight, resumed):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        make().load_state_dict({"step": np.array(3), **{f"m/{i}": np.zeros(2, np.float32) for i in range(2)}},
                               params)


def test_optimizer_validation():
    with pytest.raises(ValueError, match="learning rate"):
        SGD(0.0)
    with pytest.raises(ValueError, match="momentum"):
        Momentum(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="gradient of shape"):
        SGD(0.1).step([np.zeros(3, np.float32)], [np.zeros(4, np.float32)])


# ---- fusion plan -----------------------------------------------------------------------------------------

def test_buckets_fuse_up_to_the_limit_and_keep_small_tensors_exact():
    shapes = [(100, 10), (10,), (50, 10), (10,), (600, 10), (10,)]  # 1000, 10, 500, 10, 6000, 10 elements
    f32 = [np.float32] * len(shapes)
    b = plan_buckets(shapes, f32, fusion_bytes=6000, min_compress_size=64)
    # compressed: 1000 + 500 elements fit in 6000 bytes; 6000 elements alone; the biases fused, exact
    assert [(x.members, x.compressed) for x in b] == [((0, 2), True), ((1, 3, 5), False), ((4,), True)]
    assert b[0].offsets == (0, 1000) and b[0].size == 1500 and b[1].size == 30 and b[2].nbytes == 24000
    assert [x.name for x in b] == ["bucket0", "bucket1", "bucket2"]
    # no fusion: one bucket per tensor
    assert [x.members for x in plan_buckets(shapes, f32, fusion_bytes=0, min_compress_size=64)] == \
        [(i,) for i in range(6)]
    # everything exact without a compression path; a large limit fuses all
    everything = plan_buckets(shapes, f32, fusion_bytes=1 << 30, min_compress_size=64, compress=False)
    assert len(everything) == 1 and not everything[0].compressed and everything[0].size == 7530
    # compressed tensors alone when they may not be fused (adaptive)
    alone = plan_buckets(shapes, f32, fusion_bytes=1 << 30, min_compress_size=64, fuse_compressed=False)
    assert [x.members for x in alone] == [(0,), (1, 3, 5), (2,), (4,)]


def test_buckets_never_mix_dtypes():
    b = plan_buckets([(4,), (4,), (4,)], [np.float32, np.float64, np.float32], fusion_bytes=1 << 20,
                     min_compress_size=0)
    assert [(x.members, x.dtype) for x in b] == [((0, 2), np.dtype(np.float32)), ((1,), np.dtype(np.float64))]


def test_parse_compression():
    assert parse_compression("topk0.01").ratio == 0.01 and parse_compression("topk0.01").error_feedback
    q = parse_compression("qsgd4")
    assert (q.kind, q.bits, q.error_feedback) == ("qsgd", 4, False)
    assert parse_compression("qsgd8_ef").error_feedback
    assert parse_compression("onebit").error_feedback
    assert parse_compression("adaptive").pi == 32 and parse_compression("adaptive8").pi == 8
    assert parse_compression("fp16").cast == "fp16"
    for bad in ("zip", "qsgd9", "qsgd0", "topk0", "topk1.5", "adaptive0.5", ""):
        with pytest.raises(ValueError):
            parse_compression(bad)


# ---- the reducer on one rank -----------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["none", "dropin", "sparse", "fp16", "qsgd8"])
def test_reducer_on_one_rank_is_the_identity_for_exact_paths(compression):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((30, 40)).astype(np.float32), rng.standard_normal(40).astype(np.float32)]
    before = [g.copy() for g in grads]
    reducer = GradientReducer(MPI.COMM_SELF, compression, min_compress_size=100)
    out = reducer.reduce(grads)
    assert all(o is g for o, g in zip(out, grads))  # in place
    if compression in ("none", "dropin", "sparse"):
        assert all(np.array_equal(a, b) for a, b in zip(out, before))
    # "none" fuses both tensors into one exact bucket; the others compress the matrix and keep the bias exact
    assert reducer.stats.calls == 1 and reducer.stats.collectives == (1 if compression == "none" else 2)
    with pytest.raises(ValueError, match="shapes and dtypes changed"):
        reducer.reduce([grads[0]])
    with pytest.raises(ValueError, match="C-contiguous"):
        reducer.reduce([grads[0].T, grads[1]])


def test_reducer_arguments():
    with pytest.raises(ValueError, match="unknown compression"):
        GradientReducer(MPI.COMM_SELF, "gzip")
    with pytest.raises(ValueError, match="fusion_bytes"):
        GradientReducer(MPI.COMM_SELF, fusion_bytes=-1)
    with pytest.raises(ValueError, match="algorithm"):
        GradientReducer(MPI.COMM_SELF, algorithm="fastest")
    with pytest.raises(TypeError):
        GradientReducer("COMM_WORLD")  # type: ignore[arg-type]


# ---- command line ----------------------------------------------------------------------------------------

def test_cli_parses_every_flag():
    c = parse_args(["--dataset", "synthetic", "--model", "mlp", "--hidden", "64", "32", "--optimizer", "adam",
                    "--lr", "0.01", "--batch-size", "8", "--epochs", "3", "--compression", "QSGD4_EF", "--seed", "7",
                    "--metrics", "m.json", "--csv", "m.csv", "--checkpoint", "ck", "--resume", "--plot", "p.png",
                    "--fusion-bytes", "4M", "--min-compress-size", "256", "--synthetic-samples", "500",
                    "--synthetic-features", "12", "--synthetic-classes", "3", "--quiet", "--check-every", "1"])
    assert c.hidden == [64, 32] and c.compression == "qsgd4_ef" and c.fusion_bytes == 4 << 20
    assert (c.optimizer, c.lr, c.batch_size, c.epochs, c.seed) == ("adam", 0.01, 8, 3, 7)
    assert c.resume and c.checkpoint == "ck" and c.quiet and c.synthetic_classes == 3
    assert parse_args([]).learning_rate() == 0.1 and parse_args(["--optimizer", "adam"]).learning_rate() == 0.001
    assert parse_args([]).target_accuracy is None and parse_args(["--target-accuracy", "0.9"]).target_accuracy == 0.9


@pytest.mark.parametrize("argv,message", [
    (["--compression", "gzip"], "unknown compression 'gzip'"),
    (["--compression", "qsgd12"], "1 to 8 bits"),
    (["--model", "svm"], "invalid choice"),
    (["--fusion-bytes", "lots"], "not a byte count"),
    (["--batch-size", "0"], "batch size must be an integer >= 1"),
    (["--lr", "-1"], "learning rate must be a positive number"),
    (["--resume"], "--resume needs --checkpoint"),
    (["--model", "logistic", "--classes", "3"], "logistic regression is binary"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--model", "mlp", "--hidden", "0"], "hidden layer size"),
    (["--epochs", "-1"], "epochs must be an integer >= 0"),
    (["--target-accuracy", "0"], "target accuracy must be in"),
    (["--target-accuracy", "1.5"], "target accuracy must be in"),
    (["--target-accuracy", "nan"], "target accuracy must be in"),
    (["--model", "linear", "--target-accuracy", "0.9"], "needs a classification model"),
])
def test_cli_rejects_invalid_arguments(argv, message):
    with pytest.raises((ArgumentError, ValueError), match=message.replace("(", r"\(")):
        parse_args(argv)


def test_cli_help_is_a_message_not_an_exit():
    with pytest.raises(HelpRequested, match="--compression"):
        parse_args(["--help"])


def test_console_script_is_declared():
    from conftest import ROOT

    text = (ROOT / "pyproject.toml").read_text()
    assert '\nscaleml-train = "scaleml.train.cli:main"\n' in text
    assert '"scaleml.train"' in text.split("[tool.setuptools]")[1].split("\n[")[0]


# ---- data ------------------------------------------------------------------------------------------------

def test_synthetic_data_is_deterministic_and_shards_are_disjoint():
    d = synthetic_dataset(seed=3, samples=10000, features=7, task="classification", classes=4)
    assert (d.n_train, d.n_test, d.features, d.classes) == (10000, 2000, 7, 4)
    P = 3
    parts = [shard(d, r, P) for r in range(P)]
    X = np.concatenate([p.X for p in parts])
    full, labels = d.train_rows(np.arange(3 * (10000 // 3)))
    assert np.array_equal(X, full)  # the shards tile the training set in order, blocks across BLOCK included
    assert sum(p.X_test.shape[0] for p in parts) == 2000
    again = synthetic_dataset(seed=3, samples=10000, features=7, task="classification", classes=4)
    assert np.array_equal(again.train_rows(np.arange(5000, 5010))[0], full[5000:5010])
    assert set(np.unique(labels)) <= set(range(4)) and len(np.unique(labels)) == 4
    other = synthetic_dataset(seed=4, samples=10000, features=7, task="classification", classes=4)
    assert not np.array_equal(other.train_rows(np.arange(10))[0], full[:10])
    reg = synthetic_dataset(seed=3, samples=50, features=2, task="regression", classes=0)
    assert reg.train_rows(np.arange(50))[1].dtype == np.float32
    with pytest.raises(ValueError, match="cannot be sharded over 60 ranks"):
        shard(reg, 0, 60)


def test_npz_dataset(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, X=rng.standard_normal((40, 3)), y=rng.integers(0, 3, 40))
    d = load_dataset(str(path), seed=0, task="classification")
    assert (d.n_train, d.n_test, d.features, d.classes) == (32, 8, 3, 3)
    np.savez(path, X=rng.standard_normal((40, 3)), y=rng.integers(0, 3, 40), X_test=rng.standard_normal((5, 3)),
             y_test=rng.integers(0, 3, 5))
    assert load_dataset(str(path), seed=0, task="classification").n_test == 5
    np.savez(path, X=rng.standard_normal((40, 3)))
    with pytest.raises(ValueError, match="lacks y"):
        load_dataset(str(path), seed=0, task="classification")
    path.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot read dataset"):
        load_dataset(str(path), seed=0, task="classification")
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.npz"), seed=0, task="classification")


def test_config_identity_ignores_outputs_and_epochs():
    a = TrainConfig(epochs=3, metrics="a.json", quiet=True)
    b = TrainConfig(epochs=9, metrics=None, plot="p.png")
    assert a.identity() == b.identity()
    assert a.identity() != TrainConfig(lr=0.2).identity()
    assert TrainConfig(model="softmax", hidden=[4]).identity() == TrainConfig(model="softmax", hidden=[8]).identity()


# ---- time to accuracy: bench/time_to_accuracy.py and plot_comparison ------------------------------------

def _doc(compression: str, accs: list[float], epoch_time: float, epoch_bytes: float) -> dict:
    epochs = [{"epoch": i + 1, "test_accuracy": a, "train_loss": 1.0 - a, "time_train": epoch_time,
               "time_reduce": epoch_time / 2, "elapsed": epoch_time * (i + 1),
               "elapsed_wall": (epoch_time + 1) * (i + 1), "bytes_total_per_rank": epoch_bytes * (i + 1)}
              for i, a in enumerate(accs)]
    return {"config": {"compression": compression, "target_accuracy": 0.8}, "initial": {"test_accuracy": 0.1},
            "epochs": epochs}


def test_time_to_accuracy_table_and_plot(tmp_path):
    import json
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "bench"))
    import time_to_accuracy as tta

    exact = _doc("none", [0.5, 0.7, 0.85, 0.9], 40.0, 1e8)
    fast = _doc("qsgd4", [0.5, 0.75, 0.8], 10.0, 1e7)
    never = _doc("onebit", [0.3, 0.4], 5.0, 1e6)
    r = tta.rows([("exact", exact), ("q", fast), ("1b", never)], 0.8)
    assert [x["epoch"] for x in r] == [3, 3, None]
    assert r[0]["speedup"] == 1.0 and r[1]["speedup"] == 120.0 / 30.0 and r[2]["speedup"] is None
    assert r[1]["bytes_ratio"] == 3e8 / 3e7 and r[1]["wall"] == 33.0 and r[1]["reduce_share"] == 0.5
    text = tta.table(r, 0.8)
    assert "| q | qsgd4 | 3 | 30.0 | 4.00x |" in text and "not reached" in text
    files = []
    for name, doc in (("a", exact), ("b", fast)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(doc))
    out = tmp_path / "cmp.png"
    assert tta.main([str(f) for f in files] + ["--plot", str(out), "--title", "t"]) == 0  # target from the runs
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
