"""``scaleml-train``: data-parallel SGD under mpiexec with any ScaleML gradient path.

    mpiexec -n 4 scaleml-train --dataset digits --model mlp --hidden 64 --optimizer momentum \\
        --compression topk0.01 --epochs 10 --metrics out.json --plot out.png

Errors in the configuration, the data or a checkpoint are agreed between
ranks: rank 0 prints one ``scaleml-train: error: ...`` line and every rank
exits with status 2. An unexpected exception on any rank prints its traceback
there and aborts the whole job (``MPI_Abort``), so no rank is left waiting.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from mpi4py import MPI

from .consistency import ReplicaMismatchError, TrainingError, agree
from .models import BAG_MODES, MODELS
from .optim import OPTIMIZERS
from .reducer import COMPRESSIONS, CompressionPolicy, parse_compression
from .trainer import TrainConfig, train

__all__ = ["build_parser", "main", "parse_args"]

PROG = "scaleml-train"


class ArgumentError(Exception):
    """A command line argparse rejected (the message argparse would print)."""


class HelpRequested(Exception):
    """``--help``: the message is the help text."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting: under mpiexec only rank 0 may print."""

    def print_help(self, file=None) -> None:  # noqa: ANN001 (argparse's signature)
        raise HelpRequested(self.format_help())

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ArgumentError(message)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise ArgumentError(message or f"exit {status}")


def _size(text: str) -> int:
    """A byte count with an optional binary suffix: ``65536``, ``64K``, ``64M``, ``1G``."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = units.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in units else t
    try:
        value = int(digits) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (e.g. 65536, 64K, 64M)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _compression(text: str) -> str:
    try:
        return parse_compression(text).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _compression_policy(text: str) -> str:
    try:
        return str(CompressionPolicy.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``scaleml-train``."""
    d = TrainConfig()
    p = _Parser(prog=PROG, description="Data-parallel training over MPI with ScaleML's gradient collectives "
                "(run under mpiexec; every rank trains on its own shard).",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--dataset", default=d.dataset, help="digits, synthetic, zipf-text (token ids for --model "
                   "embedding-bag), or PATH.npz (X, y, optional X_test, y_test)")
    g.add_argument("--model", choices=MODELS, default=d.model)
    g.add_argument("--hidden", type=int, nargs="+", default=d.hidden, metavar="N", help="MLP hidden layer sizes")
    g.add_argument("--classes", type=int, default=None, help="number of classes (default: from the labels)")
    g.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help="test share when the data has no test set")
    g.add_argument("--synthetic-samples", type=int, default=d.synthetic_samples, metavar="N")
    g.add_argument("--synthetic-features", type=int, default=d.synthetic_features, metavar="D")
    g.add_argument("--synthetic-classes", type=int, default=d.synthetic_classes, metavar="K",
                   help="classes of synthetic and zipf-text (--synthetic-samples sizes both)")
    g.add_argument("--vocab", type=int, default=d.vocab, metavar="V",
                   help="zipf-text and embedding-bag: token ids (rows of the embedding)")
    g.add_argument("--embed-dim", type=int, default=d.embed_dim, metavar="D", help="embedding-bag: row width")
    g.add_argument("--bag-length", type=int, default=d.bag_length, metavar="L",
                   help="zipf-text: the largest bag (bags hold L/2 to L tokens)")
    g.add_argument("--bag-mode", choices=BAG_MODES, default=d.bag_mode, help="embedding-bag: pooling of a bag")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    g.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.1 sgd, 0.05 momentum, "
                   "0.001 adam)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per rank and step")
    g.add_argument("--epochs", type=int, default=d.epochs, help="epochs in all (a resumed run continues to this)")
    g.add_argument("--target-accuracy", type=float, default=None, metavar="A",
                   help="stop at the end of the first epoch whose test accuracy is at least A (in (0, 1]; "
                        "classification)")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("gradient averaging")
    g.add_argument("--compression", type=_compression, default=d.compression, metavar="NAME",
                   help="; ".join(f"{k}: {v}" for k, v in COMPRESSIONS.items()))
    g.add_argument("--compression-policy", type=_compression_policy, default=None, metavar="POLICY",
                   help="per-layer compressions instead of --compression: PATTERN=NAME pairs, comma-separated, "
                        "first match wins, over the model's parameter names (W1, b1, W2, ...; linear/logistic: w, "
                        "b; softmax: W, b), e.g. 'b*=none,W1=topk0.01,*=qsgd4'; unmatched parameters exact; a JSON "
                        "object or a JSON file's path also")
    g.add_argument("--fusion-bytes", type=_size, default=d.fusion_bytes, metavar="BYTES",
                   help="largest fused buffer (0: one collective per tensor)")
    g.add_argument("--min-compress-size", type=int, default=d.min_compress_size, metavar="N",
                   help="tensors with fewer elements are averaged exactly (fused)")
    g.add_argument("--algorithm", choices=("fixed", "auto"), default=d.algorithm,
                   help="fixed: one algorithm per path, reproducible bit for bit; auto: the engine's choice by "
                        "measured time")
    g.add_argument("--check-every", type=int, default=d.check_every, metavar="K",
                   help="compare a hash of the parameters between ranks every K steps (0: at epoch ends only)")
    g = p.add_argument_group("outputs and checkpoints")
    g.add_argument("--metrics", default=None, metavar="OUT.json", help="per-epoch metrics (rank 0 writes)")
    g.add_argument("--csv", default=None, metavar="OUT.csv", help="per-epoch metrics as CSV")
    g.add_argument("--plot", default=None, metavar="OUT.png", help="loss and accuracy against time and bytes")
    g.add_argument("--checkpoint", default=None, metavar="DIR", help="checkpoint every epoch into DIR "
                   "(DIR/rank{r}.npz and DIR/meta.json)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="E")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint DIR")
    g.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    return p


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of a command line.

    Raises
    ------
    ArgumentError
        For a command line argparse rejects.
    HelpRequested
        For ``--help`` (its message is the help text).
    ValueError
        For values no run accepts (:meth:`TrainConfig.validate`).
    """
    p = build_parser()
    args = p.parse_args(argv)
    config = TrainConfig(**{k: v for k, v in vars(args).items()})
    config.validate()
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scaleml-train`` (and ``python -m scaleml.train``); returns the exit status."""
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    config = None
    problem: Exception | None = None
    try:
        config = parse_args(argv)
    except HelpRequested as exc:  # --help: printed once, exit 0 everywhere
        if rank == 0:
            sys.stdout.write(str(exc))
        return 0
    except (ArgumentError, ValueError) as exc:
        problem = exc
    try:
        agree(comm, problem)
        assert config is not None
        train(config, comm)
    except TrainingError as exc:
        if rank == 0:
            print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except ReplicaMismatchError as exc:  # raised on every rank alike
        if rank == 0:
            print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 3
    except KeyboardInterrupt:
        raise
    except BaseException:
        # A rank alone in an unexpected exception would leave the others waiting in a collective: abort the job.
        sys.stderr.write(f"{PROG}: rank {rank}: unexpected error\n{traceback.format_exc()}")
        sys.stderr.flush()
        comm.Abort(1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
