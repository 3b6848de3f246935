"""The data-parallel training loop of ``scaleml-train``: shards, steps, metrics, checkpoints.

:func:`train` runs one configuration (:class:`TrainConfig`) on every rank of
a communicator and returns a :class:`TrainResult`. Every problem a rank sees
before training (configuration, data, labels, checkpoint) is agreed between
ranks and raised as the same :class:`TrainingError` on every rank.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mpi4py import MPI

from ..reshard import replicated_value
from .checkpoint import load_checkpoint, save_checkpoint
from .consistency import TrainingError, agree, check_replicas
from .data import STOP_WORDS, Dataset, Shard, load_dataset, shard
from .models import BAG_MODES, MODELS, Model, make_model
from .optim import OPTIMIZERS, Optimizer, make_optimizer
from .reducer import CompressionPolicy, GradientReducer, parse_compression

__all__ = ["RESUME_KEYS", "TrainConfig", "TrainResult", "plot_comparison", "plot_history", "train"]

_DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "adam": 0.001}


@dataclass
class TrainConfig:
    """Everything one training run depends on (the ``scaleml-train`` flags)."""

    dataset: str = "digits"
    """``digits``, ``synthetic``, ``zipf-text`` or the path of an ``.npz`` file."""
    model: str = "softmax"
    hidden: list[int] = field(default_factory=lambda: [128])
    """Hidden layer sizes of the MLP."""
    optimizer: str = "sgd"
    lr: float | None = None
    """Learning rate (default: 0.1 for sgd, 0.05 for momentum, 0.001 for adam)."""
    batch_size: int = 32
    """Samples per rank and step (the global batch is ``P * batch_size``)."""
    epochs: int = 10
    """Epochs in all (a resumed run continues up to this many)."""
    target_accuracy: float | None = None
    """Stop at the end of the first epoch whose test accuracy is at least this (classification; ``None``: run
    every epoch)."""
    compression: str = "none"
    compression_policy: str | None = None
    """A per-layer policy (``'W1=qsgd4,b*=none,*=topk0.01'``, JSON, or a JSON file; see
    :class:`scaleml.compress.policy.CompressionPolicy`) over the model's parameter names; instead of
    ``compression``."""
    seed: int = 0
    fusion_bytes: int = 64 << 20
    min_compress_size: int = 1024
    algorithm: str = "fixed"
    """``fixed`` (reproducible) or ``auto`` (see :class:`GradientReducer`)."""
    classes: int | None = None
    """Number of classes (default: inferred from the labels; 2 for logistic regression)."""
    test_fraction: float = 0.2
    synthetic_samples: int = 10000
    synthetic_features: int = 100
    synthetic_classes: int = 10
    vocab: int = 100000
    """``zipf-text`` and the ``embedding-bag``: number of token ids (rows of the embedding)."""
    embed_dim: int = 32
    """Width of the ``embedding-bag``'s embedding rows."""
    bag_length: int = 20
    """``zipf-text``: the largest bag (bags hold between half of it and all of it)."""
    bag_mode: str = "mean"
    """How the ``embedding-bag`` pools a bag: ``mean`` or ``sum``."""
    check_every: int = 100
    """Compare a hash of the parameters between ranks every this many steps (0: only at epoch ends)."""
    checkpoint: str | None = None
    """Directory to checkpoint into at the end of every ``checkpoint_every`` epochs."""
    checkpoint_every: int = 1
    resume: bool = False
    """Continue from the checkpoint in ``checkpoint``."""
    metrics: str | None = None
    csv: str | None = None
    plot: str | None = None
    quiet: bool = False
    progress: bool | None = None
    """A tqdm bar on rank 0 (default: when not quiet and stderr is a terminal)."""

    def learning_rate(self) -> float:
        """``lr``, or the optimizer's default."""
        return float(self.lr) if self.lr is not None else _DEFAULT_LR.get(self.optimizer, 0.1)

    def validate(self) -> None:
        """``ValueError`` for a value no run accepts (the data-dependent checks come later)."""
        def positive_int(name: str, v: Any, minimum: int = 1) -> None:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")

        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {', '.join(MODELS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        parse_compression(self.compression)
        if self.compression_policy is not None:
            CompressionPolicy.parse(self.compression_policy)
            if parse_compression(self.compression).kind != "none":
                raise ValueError("give --compression or --compression-policy, not both")
        lr = self.learning_rate()
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"the learning rate must be a positive number, got {self.lr!r}")
        positive_int("batch size", self.batch_size)
        positive_int("epochs", self.epochs, 0)
        positive_int("fusion bytes", self.fusion_bytes, 0)
        positive_int("min compress size", self.min_compress_size, 0)
        positive_int("check every", self.check_every, 0)
        positive_int("checkpoint every", self.checkpoint_every)
        positive_int("seed", self.seed, 0)
        if self.model == "mlp":
            if not self.hidden:
                raise ValueError("the MLP needs at least one hidden layer (--hidden)")
            for h in self.hidden:
                positive_int("hidden layer size", h)
        if self.algorithm not in ("fixed", "auto"):
            raise ValueError(f"algorithm must be 'fixed' or 'auto', got {self.algorithm!r}")
        if self.classes is not None:
            positive_int("classes", self.classes, 2)
            if self.model == "logistic" and self.classes != 2:
                raise ValueError("logistic regression is binary (2 classes); use --model softmax")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test fraction must be in (0, 1), got {self.test_fraction!r}")
        if self.dataset == "synthetic":
            positive_int("synthetic samples", self.synthetic_samples)
            positive_int("synthetic features", self.synthetic_features)
            positive_int("synthetic classes", self.synthetic_classes, 2)
        elif self.dataset == "zipf-text":
            positive_int("synthetic samples", self.synthetic_samples)
            positive_int("synthetic classes", self.synthetic_classes, 2)
            positive_int("vocab", self.vocab, STOP_WORDS + self.synthetic_classes)
            positive_int("bag length", self.bag_length)
        elif self.dataset != "digits" and not self.dataset.endswith(".npz"):
            raise ValueError(f"unknown dataset {self.dataset!r}; expected 'digits', 'synthetic', 'zipf-text' or the "
                             "path of an .npz file")
        # The bag model reads token ids, the other models features: each needs its own kind of data.
        if (self.model == "embedding-bag") != (self.dataset == "zipf-text"):
            raise ValueError("--model embedding-bag trains on --dataset zipf-text (token ids), and zipf-text only "
                             f"suits the embedding-bag; got --model {self.model} --dataset {self.dataset}")
        if self.model == "embedding-bag":
            positive_int("embed dim", self.embed_dim)
            if self.bag_mode not in BAG_MODES:
                raise ValueError(f"bag mode must be one of {', '.join(BAG_MODES)}, got {self.bag_mode!r}")
            for h in self.hidden:
                positive_int("hidden layer size", h)
            if not self.hidden:
                raise ValueError("the embedding-bag's MLP needs at least one hidden layer (--hidden)")
        if self.resume and not self.checkpoint:
            raise ValueError("--resume needs --checkpoint DIR (the checkpoint to resume from)")
        if self.target_accuracy is not None:
            t = self.target_accuracy
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
                raise ValueError(f"target accuracy must be in (0, 1], got {t!r}")
            if self.model == "linear":
                raise ValueError("a target accuracy needs a classification model (--model linear is a regression)")

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the checkpoint (:data:`RESUME_KEYS`), normalised."""
        out = {k: getattr(self, k) for k in RESUME_KEYS}
        out["lr"] = self.learning_rate()
        out["hidden"] = list(self.hidden) if self.model in ("mlp", "embedding-bag") else None
        if self.compression_policy is not None:  # a JSON file's policy by its content, in the canonical text
            out["compression_policy"] = str(CompressionPolicy.parse(self.compression_policy))
        if self.dataset not in ("digits", "synthetic", "zipf-text"):
            out["dataset"] = os.path.abspath(self.dataset)
        if self.dataset not in ("synthetic", "zipf-text"):
            for k in ("synthetic_samples", "synthetic_features", "synthetic_classes"):
                out[k] = None
        if self.dataset == "zipf-text":
            out["synthetic_features"] = None
        if self.model != "embedding-bag":  # absent from older checkpoints: None there too
            for k in ("vocab", "embed_dim", "bag_length", "bag_mode"):
                out[k] = None
        return out


RESUME_KEYS = ("dataset", "model", "hidden", "optimizer", "lr", "batch_size", "compression", "seed",
               "fusion_bytes", "min_compress_size", "algorithm", "classes", "test_fraction", "synthetic_samples",
               "synthetic_features", "synthetic_classes", "vocab", "embed_dim", "bag_length", "bag_mode",
               "compression_policy")
"""Settings that define a run: a checkpoint resumes only with the same values (``epochs`` and the outputs may
change)."""


@dataclass
class TrainResult:
    """What :func:`train` returns on every rank."""

    params: list[np.ndarray]
    """The final parameters (identical on every rank)."""
    history: list[dict[str, Any]]
    """One dict of metrics per epoch (the same on every rank)."""
    initial: dict[str, float]
    """The test metrics of the initial parameters (before the first step)."""
    model: Model
    optimizer: Optimizer
    reducer: GradientReducer
    config: TrainConfig
    world_size: int

    def summary(self) -> dict[str, Any]:
        """The JSON document of ``--metrics``."""
        return {"config": dataclasses.asdict(self.config), "world_size": self.world_size,
                "model": {"name": self.model.name, "task": self.model.task, "classes": self.model.classes,
                          "parameters": int(sum(p.size for p in self.params)),
                          "shapes": [list(p.shape) for p in self.params]},
                "buckets": [{"members": list(b.members), "elements": b.size, "compressed": b.compressed}
                            for b in self.reducer.buckets],
                "initial": self.initial, "epochs": self.history,
                "final": self.history[-1] if self.history else {}, "target": self.target()}

    def target(self) -> dict[str, Any] | None:
        """Where the run first reached ``config.target_accuracy`` (``None`` without a target).

        Returns
        -------
        dict or None
            ``accuracy`` (the target), ``reached``, and for the first epoch at
            or above it (else ``None``): ``epoch``, ``test_accuracy``,
            ``elapsed`` (training time), ``elapsed_wall`` (wall-clock time,
            evaluations included) and ``bytes_total_per_rank``.
        """
        target = self.config.target_accuracy
        if target is None:
            return None
        first = next((h for h in self.history if h.get("test_accuracy", -1.0) >= target), None)
        keys = ("epoch", "test_accuracy", "elapsed", "elapsed_wall", "bytes_total_per_rank")
        return {"accuracy": target, "reached": first is not None,
                **{k: (first.get(k) if first is not None else None) for k in keys}}


def _prepare(config: TrainConfig, comm: MPI.Intracomm) -> tuple[Dataset, Model, Shard]:
    """Validate the configuration, load and shard the data, build the model (agreed between ranks)."""
    error: Exception | None = None
    try:
        config.validate()
    except ValueError as exc:
        error = exc
    agree(comm, error)
    task = "regression" if config.model == "linear" else "classification"
    data = model = part = None
    try:
        data = load_dataset(config.dataset, seed=config.seed, task=task,
                            classes=2 if config.model == "logistic" else config.synthetic_classes,
                            samples=config.synthetic_samples, features=config.synthetic_features,
                            test_fraction=config.test_fraction, vocab=config.vocab, bag_length=config.bag_length)
        classes = 0
        if task == "classification":
            classes = 2 if config.model == "logistic" else (config.classes or max(data.classes, 2))
        model = make_model(config.model, data.features, classes, config.hidden, vocab=config.vocab,
                           embed_dim=config.embed_dim, bag_mode=config.bag_mode)
        if data.labels is not None:
            model.check_labels(data.labels, f"the labels of {data.name}")
        part = shard(data, comm.Get_rank(), comm.Get_size())
        if comm.Get_rank() == 0:
            for flag, path in (("--metrics", config.metrics), ("--csv", config.csv), ("--plot", config.plot)):
                folder = os.path.dirname(os.path.abspath(path)) if path else None
                if folder and not os.path.isdir(folder):
                    raise ValueError(f"{flag} {path}: directory {folder} does not exist")
    except (ValueError, MemoryError) as exc:
        error = exc
    agree(comm, error)
    assert data is not None and model is not None and part is not None
    return data, model, part


def _evaluate(model: Model, params: Sequence[np.ndarray], part: Shard, comm: MPI.Intracomm) -> dict[str, float]:
    """Test metrics over every rank's slice of the test set (sums added up with one allreduce)."""
    local = model.evaluate(params, part.X_test, part.y_test)
    keys = sorted(local)
    total = np.array([local[k] for k in keys], dtype=np.float64)
    comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
    s = dict(zip(keys, total.tolist()))
    count = max(s["count"], 1.0)
    out = {"test_loss": s["loss"] / count}
    if model.task == "regression":
        sst = s["y_sq_sum"] - s["y_sum"] ** 2 / count
        out["test_mse"] = s["sse"] / count
        out["test_r2"] = 1.0 - s["sse"] / sst if sst > 0 else float("nan")
    else:
        out["test_accuracy"] = s["correct"] / count
    return out


def _progress(config: TrainConfig, rank: int, total: int, epoch: int, epochs: int):
    show = config.progress if config.progress is not None else (not config.quiet and sys.stderr.isatty())
    if rank != 0 or not show:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in requirements.txt
        return None
    return tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)


def train(config: TrainConfig, comm: MPI.Intracomm = MPI.COMM_WORLD) -> TrainResult:
    """Train ``config`` data-parallel on the ranks of ``comm`` (collective).

    Each rank trains on its shard; gradients are averaged with a
    :class:`GradientReducer`; every rank applies the same update, so the
    replicas stay bitwise identical (checked every ``check_every`` steps and
    at the end of every epoch). With ``target_accuracy`` the run stops at
    the end of the first epoch whose test accuracy reaches it (every rank at
    the same epoch; :meth:`TrainResult.target` says where). Rank 0 writes
    ``metrics``, ``csv`` and ``plot``; every rank writes its own checkpoint
    file.

    Parameters
    ----------
    config : TrainConfig
        The run.
    comm : mpi4py.MPI.Intracomm
        The data-parallel ranks.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingError
        On every rank, for an invalid configuration, unusable data or labels,
        more ranks than training samples, or a missing, corrupt or mismatched
        checkpoint.
    ReplicaMismatchError
        On every rank, when the replicas' parameters differ.
    """
    rank, P = comm.Get_rank(), comm.Get_size()
    data, model, part = _prepare(config, comm)
    params = model.init(config.seed)
    optimizer = make_optimizer(config.optimizer, config.learning_rate())
    reducer = GradientReducer(comm, config.compression, fusion_bytes=config.fusion_bytes,
                              min_compress_size=config.min_compress_size, seed=config.seed,
                              algorithm=config.algorithm, **_policy_arguments(config, model))
    history: list[dict[str, Any]] = []
    start_epoch = step = 0
    identity = config.identity()
    if config.resume:
        assert config.checkpoint is not None
        state, meta = load_checkpoint(config.checkpoint, comm, identity, reshard=_reshard_checkpoint)
        error: Exception | None = None
        try:
            _restore(state, params, optimizer, reducer)
        except (ValueError, TypeError, KeyError) as exc:
            error = ValueError(f"checkpoint {config.checkpoint}: {exc}")
        agree(comm, error)
        start_epoch, step, history = int(meta["epoch"]), int(meta["step"]), list(meta.get("history", []))
        initial = dict(meta.get("initial", {}))
        check_replicas(comm, params, "resumed parameters")
        if rank == 0 and not config.quiet and int(meta["world_size"]) != P:
            what = "residuals resharded, sum conserved" if any(k.startswith("reducer/ef/") for k in state) else \
                "no error-feedback residuals to reshard"
            print(f"resuming a checkpoint of {meta['world_size']} ranks at {P} ranks: {what}", flush=True)
    else:
        initial = _evaluate(model, params, part, comm)
    n_local = part.X.shape[0]
    steps_per_epoch = math.ceil(n_local / config.batch_size)
    elapsed = history[-1]["elapsed"] if history else 0.0
    elapsed_wall = history[-1].get("elapsed_wall", elapsed) if history else 0.0
    bytes_total = history[-1]["bytes_total_per_rank"] if history else 0.0
    if rank == 0 and not config.quiet:
        start = f", resumed at epoch {start_epoch}" if config.resume else ""
        print(f"scaleml-train: {config.model} on {data.name} ({data.n_train} train / {data.n_test} test samples, "
              f"{data.features} features), {P} ranks x {n_local} samples, batch {config.batch_size}/rank, "
              f"{steps_per_epoch} steps/epoch, compression {_compression_text(reducer)}{start}", flush=True)
    # A diverging run overflows: it is reported once, as an error, not as numpy warnings on every rank.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        target = config.target_accuracy
        reached = target is not None and bool(history) and history[-1].get("test_accuracy", -1.0) >= target
        for epoch in range(start_epoch, config.epochs if not reached else start_epoch):
            before = reducer.stats.as_dict()
            t_compute = t_reduce = t_check = 0.0
            loss_sum = 0.0
            order = np.random.default_rng([config.seed, rank, epoch, 0xB47C]).permutation(n_local)
            bar = _progress(config, rank, steps_per_epoch, epoch, config.epochs)
            t_epoch = time.perf_counter()
            for s in range(steps_per_epoch):
                t0 = time.perf_counter()
                idx = order[s * config.batch_size:(s + 1) * config.batch_size]
                loss, grads = model.loss_and_grads(params, part.X[idx], part.y[idx])
                t1 = time.perf_counter()
                try:
                    reducer.reduce(grads)
                except (ValueError, TypeError) as exc:  # the reducer and the collectives raise on every rank alike
                    raise TrainingError(f"epoch {epoch + 1}, step {step + 1}: {exc}" +
                                        (" (the training diverged: try a smaller --lr)" if "NaN" in str(exc) else ""),
                                        list(range(P))) from exc
                t2 = time.perf_counter()
                optimizer.step(params, grads)
                t3 = time.perf_counter()
                t_compute += (t1 - t0) + (t3 - t2)
                t_reduce += t2 - t1
                loss_sum += loss
                step += 1
                if config.check_every and step % config.check_every == 0 and s != steps_per_epoch - 1:
                    check_replicas(comm, params)
                    t_check += time.perf_counter() - t3
                if bar is not None:
                    bar.update(1)
            t4 = time.perf_counter()
            check_replicas(comm, params)  # every epoch ends with a check
            t_train = time.perf_counter() - t_epoch
            t_check += time.perf_counter() - t4
            if bar is not None:
                bar.close()
            t5 = time.perf_counter()
            metrics = _evaluate(model, params, part, comm)
            t6 = time.perf_counter()
            t_eval, t_wall = t6 - t5, t6 - t_epoch
            after = reducer.stats.as_dict()
            local = np.array([loss_sum / max(steps_per_epoch, 1), after["bytes_sent"] - before["bytes_sent"]],
                             dtype=np.float64)
            sums = np.empty_like(local)
            comm.Allreduce(local, sums, op=MPI.SUM)
            times = np.array([t_train, t_compute, t_reduce, t_check, t_eval,
                              after["seconds_collective"] - before["seconds_collective"],
                              after["seconds_fusion"] - before["seconds_fusion"],
                              after["seconds_compress"] - before["seconds_compress"], local[1], t_wall],
                             dtype=np.float64)
            slowest = np.empty_like(times)
            comm.Allreduce(times, slowest, op=MPI.MAX)
            elapsed += float(slowest[0])
            elapsed_wall += float(slowest[9])
            bytes_total += float(sums[1]) / P
            record = {"epoch": epoch + 1, "step": step, "train_loss": float(sums[0]) / P, **metrics,
                      "time_train": float(slowest[0]), "time_compute": float(slowest[1]),
                      "time_reduce": float(slowest[2]), "time_collective": float(slowest[5]),
                      "time_fusion": float(slowest[6]), "time_compress": float(slowest[7]),
                      "time_check": float(slowest[3]), "time_eval": float(slowest[4]),
                      "time_wall": float(slowest[9]), "elapsed": elapsed, "elapsed_wall": elapsed_wall,
                      "bytes_sent_per_rank": float(sums[1]) / P, "bytes_sent_max": float(slowest[8]),
                      "bytes_total_per_rank": bytes_total}
            # The measured gradient density: non-zeros per element of the compressed buckets, over this epoch's
            # steps and every rank (None when nothing is compressed, e.g. --compression none).
            counts = np.array([after["nonzeros_compressed"] - before["nonzeros_compressed"],
                               after["elements_compressed"] - before["elements_compressed"]], dtype=np.float64)
            comm.Allreduce(MPI.IN_PLACE, counts, op=MPI.SUM)
            record["grad_density"] = float(counts[0] / counts[1]) if counts[1] else None
            history.append(record)
            if not (math.isfinite(record["train_loss"]) and math.isfinite(metrics["test_loss"])):
                # agreed values (allreduced): every rank raises
                raise TrainingError(f"the training diverged at epoch {epoch + 1} (train loss {record['train_loss']}, "
                                    f"test loss {metrics['test_loss']}): try a smaller --lr", list(range(P)))
            if rank == 0 and not config.quiet:
                quality = (f"test acc {metrics['test_accuracy']:.4f}" if "test_accuracy" in metrics
                           else f"test mse {metrics['test_mse']:.4g} r2 {metrics['test_r2']:.4f}")
                print(f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, test loss "
                      f"{metrics['test_loss']:.4f}, {quality}, {t_train:.2f} s (compute "
                      f"{record['time_compute']:.2f} s, reduce {record['time_reduce']:.2f} s), "
                      f"{record['bytes_sent_per_rank'] / 1e6:.3f} MB/rank" +
                      (f", gradient density {record['grad_density']:.3%}" if record["grad_density"] is not None
                       else ""), flush=True)
            # test accuracies are agreed (allreduced): every rank stops at the same epoch
            reached = target is not None and metrics.get("test_accuracy", -1.0) >= target
            if rank == 0 and reached and not config.quiet:
                print(f"target accuracy {target:.4f} reached at epoch {epoch + 1}: {elapsed:.2f} s of training "
                      f"({elapsed_wall:.2f} s with evaluations), {bytes_total / 1e6:.3f} MB/rank", flush=True)
            if config.checkpoint and ((epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs
                                      or reached):
                meta = {"epoch": epoch + 1, "step": step, "config": identity, "history": history, "initial": initial}
                save_checkpoint(config.checkpoint, comm, _snapshot(params, optimizer, reducer, step), meta)
            if reached:
                break
    result = TrainResult(params, history, initial, model, optimizer, reducer, config, P)
    if rank == 0:
        _write_outputs(config, result)
    return result


def _policy_arguments(config: TrainConfig, model: Model) -> dict[str, Any]:
    """The reducer's ``policy`` and ``names`` (the model's parameter names) of ``--compression-policy``."""
    if config.compression_policy is None:
        return {}
    return {"policy": config.compression_policy, "names": [name for name, _ in model.shapes()]}


def _compression_text(reducer: GradientReducer) -> str:
    """The compression as the first line says it: the name, or the policy."""
    return reducer.spec.name if reducer.policy is None else f"policy {reducer.policy}"


def _snapshot(params: Sequence[np.ndarray], optimizer: Optimizer, reducer: GradientReducer,
              step: int) -> dict[str, np.ndarray]:
    state = {f"param/{i}": p for i, p in enumerate(params)}
    state.update({f"optimizer/{k}": v for k, v in optimizer.state_dict().items()})
    state.update({f"reducer/{k}": v for k, v in reducer.state_dict().items()})
    state["step"] = np.array(step, dtype=np.int64)
    return state


def _reshard_checkpoint(states: list[dict[str, np.ndarray]], new_size: int) -> list[dict[str, np.ndarray]]:
    """Every old rank's checkpoint arrays as ``new_size`` ranks' (the ``reshard`` of :func:`load_checkpoint`).

    The reducer's state (``reducer/...``) goes through
    :meth:`GradientReducer.reshard_state_dicts`; the parameters, the
    optimizer state and the step are the same on every rank (every rank
    applies the same update) and carry over, checked bitwise.
    """
    prefix = "reducer/"
    reducer_states = [{k[len(prefix):]: v for k, v in s.items() if k.startswith(prefix)} for s in states]
    carried = {k: replicated_value(states, k) for k in states[0]
               if not k.startswith(prefix) and k not in ("epoch", "world_size", "rank")}
    extra = sorted(set().union(*states) - set(states[0]))
    if extra:
        raise ValueError(f"old ranks hold keys rank 0 does not ({', '.join(extra[:4])})")
    return [dict(carried, **{prefix + k: v for k, v in share.items()})
            for share in GradientReducer.reshard_state_dicts(reducer_states, new_size)]


def _restore(state: dict[str, np.ndarray], params: list[np.ndarray], optimizer: Optimizer,
             reducer: GradientReducer) -> None:
    for i, p in enumerate(params):
        a = state.get(f"param/{i}")
        if a is None or a.shape != p.shape or a.dtype != p.dtype:
            raise ValueError(f"parameter {i} is {None if a is None else f'{a.dtype}{a.shape}'}, the model has "
                             f"{p.dtype}{p.shape}")
        p[...] = a
    if f"param/{len(params)}" in state:
        raise ValueError(f"the checkpoint holds more than the model's {len(params)} parameters")
    optimizer.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("optimizer/")}, params)
    reducer.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("reducer/")})


def _write_outputs(config: TrainConfig, result: TrainResult) -> None:
    if config.metrics:
        with open(config.metrics, "w") as f:
            json.dump(result.summary(), f, indent=1)
    if config.csv and result.history:
        with open(config.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for h in result.history for k in h)))
            writer.writeheader()
            writer.writerows(result.history)
    if config.plot and result.history:
        plot_history(result.history, config.plot, f"{config.model} on {config.dataset}, {result.world_size} ranks, "
                     f"{config.compression}", result.initial)


def plot_history(history: Sequence[dict[str, Any]], path: str, title: str = "",
                 initial: dict[str, float] | None = None) -> None:
    """Loss and accuracy (or R^2) against training time and against bytes sent per rank (matplotlib, Agg).

    ``initial`` (the test metrics before training) starts the test curves at time 0 and 0 bytes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = "test_accuracy" if "test_accuracy" in history[0] else "test_r2"
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for col, (xkey, xlabel, scale) in enumerate((("elapsed", "training time (s)", 1.0),
                                                 ("bytes_total_per_rank", "MB sent per rank", 1e-6))):
        x = [h[xkey] * scale for h in history]
        for row, (keys, ylabel) in enumerate(((("train_loss", "test_loss"), "loss"), ((quality,), quality))):
            ax = axes[row][col]
            for k in keys:
                start = [initial[k]] if initial and k in initial else []
                ax.plot([0.0] * len(start) + x, start + [h[k] for h in history], marker="o", label=k)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)



def plot_comparison(runs: Sequence[tuple[str, dict[str, Any]]], path: str, title: str = "",
                    target: float | None = None) -> None:
    """Several runs in one figure: test accuracy (or R^2) and train loss against training time and bytes sent.

    Parameters
    ----------
    runs : sequence of (str, dict)
        A label and the ``--metrics`` document (:meth:`TrainResult.summary`)
        of each run; the curves against time start at the initial test
        metrics (time 0) where the document has them. Bytes are on a log
        axis.
    path : str
        The PNG to write (matplotlib, Agg).
    title : str
        The figure's title.
    target : float, optional
        A target accuracy, drawn as a dashed line on the accuracy panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise ValueError("plot_comparison needs at least one run")
    quality = "test_accuracy" if "test_accuracy" in runs[0][1]["epochs"][0] else "test_r2"
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, (xkey, xlabel, scale) in enumerate((("elapsed", "training time (s)", 1.0),
                                                 ("bytes_total_per_rank", "MB sent per rank", 1e-6))):
        for row, (key, ylabel) in enumerate(((quality, quality.replace("_", " ")), ("train_loss", "train loss"))):
            ax = axes[row][col]
            for label, doc in runs:
                history = doc["epochs"]
                initial = doc.get("initial") or {}
                start = [initial[key]] if key in initial and col == 0 else []  # no 0 on the log axis
                x = [0.0] * len(start) + [h[xkey] * scale for h in history]
                ax.plot(x, start + [h[key] for h in history], marker="o", markersize=3, label=label)
            if target is not None and row == 0:
                ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.3f}")
            if col == 1:
                ax.set_xscale("log")
            ax.set_xlabel(xlabel + (" (log)" if col == 1 else ""))
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
