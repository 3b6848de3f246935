"""Data-parallel training with ScaleML's gradient collectives: ``scaleml-train`` and its library parts.

>>> from mpi4py import MPI
>>> from scaleml.train import GradientReducer
>>> reducer = GradientReducer(MPI.COMM_WORLD, "qsgd4", fusion_bytes=64 << 20, min_compress_size=1024)
>>> grads = reducer.reduce(grads)          # in place: every rank gets the same averages

* :class:`GradientReducer` (:mod:`.reducer`): averages a list of gradients
  through ``none``, ``dropin``, ``sparse``, ``topkR``, ``qsgdB[_ef]``,
  ``onebit``, ``adaptive`` or ``fp16``, fused in buckets, with its
  error-feedback state in ``state_dict()``.
* :mod:`.models` (linear, logistic, softmax regression, MLP in numpy with
  their own backward passes), :mod:`.optim` (SGD, momentum, Adam),
  :mod:`.data` (digits, synthetic, ``.npz``; sharding),
  :mod:`.checkpoint` (one file per rank, atomic), :mod:`.consistency`
  (agreed errors, replica checks).
* :func:`train` runs a :class:`TrainConfig`; :func:`main` is the command line
  (``mpiexec -n 4 scaleml-train ...`` or ``python -m scaleml.train``).
"""

from __future__ import annotations

from .checkpoint import load_checkpoint, save_checkpoint
from .cli import main
from .consistency import ReplicaMismatchError, TrainingError, agree, check_replicas
from .data import Dataset, load_dataset, shard
from .models import MLP, LinearRegression, LogisticRegression, Model, SoftmaxRegression, make_model
from .optim import SGD, Adam, Momentum, Optimizer, make_optimizer
from .reducer import COMPRESSIONS, Bucket, GradientReducer, parse_compression, plan_buckets
from .trainer import TrainConfig, TrainResult, plot_comparison, plot_history, train

__all__ = [
    "COMPRESSIONS",
    "MLP",
    "SGD",
    "Adam",
    "Bucket",
    "Dataset",
    "GradientReducer",
    "LinearRegression",
    "LogisticRegression",
    "Model",
    "Momentum",
    "Optimizer",
    "ReplicaMismatchError",
    "SoftmaxRegression",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "agree",
    "check_replicas",
    "load_checkpoint",
    "load_dataset",
    "main",
    "make_model",
    "make_optimizer",
    "parse_compression",
    "plan_buckets",
    "plot_comparison",
    "plot_history",
    "save_checkpoint",
    "shard",
    "train",
]
