"""Train a small torch classifier with DistributedDataParallel, its gradients sent through ScaleML over MPI.

The model code is plain DDP; one line, ``ddp.register_comm_hook(state,
scaleml.torch.allreduce_hook)``, routes the gradient buckets through a
ScaleML collective (exact, QSGD, 1-bit, top-k, ...). ``gloo`` in
``--compression`` is plain DDP without the hook (gloo's allreduce): the
baseline. Every compression trains from the same initial weights on the same
batches (fixed seeds), so the accuracies compare like for like.

Run (any number of ranks; scikit-learn's digits, 8x8 images, 10 classes)::

    mpiexec -n 4 python examples/torch_ddp.py --compression gloo none qsgd4 onebit topk0.01 --seeds 0 1 2

Rank 0 prints one row per run and a markdown table of the mean test accuracy
per compression (``docs/torch.md`` shows one).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import torch
from mpi4py import MPI
from torch.nn.parallel import DistributedDataParallel

import scaleml.torch as smt

BASELINE = "gloo"
"""The ``--compression`` name of plain DDP (no hook: gloo's allreduce)."""


def load_digits(split_seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, ...]:
    """scikit-learn's digits in [0, 1]: ``(X_train, y_train, X_test, y_test)``, split by ``split_seed``."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    X, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    order = np.random.default_rng(split_seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def make_model(n_in: int, hidden: int, n_out: int) -> torch.nn.Module:
    """A two-layer perceptron."""
    return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out))


def train(compression: str, *, seed: int = 0, epochs: int = 40, batch: int = 32, lr: float = 0.2,
          momentum: float = 0.0, hidden: int = 128, bucket_cap_mb: float | None = None, min_compress_numel: int = 1024,
          find_unused_parameters: bool = False, nonblocking: bool = True,
          comm: MPI.Intracomm = MPI.COMM_WORLD,
          data: tuple[np.ndarray, ...] | None = None) -> dict[str, Any]:
    """Train the classifier on every rank of ``comm`` (collective) and return its test accuracy.

    Parameters
    ----------
    compression : str
        ``gloo`` (plain DDP, no hook) or a :class:`scaleml.torch.ScaleMLHookState` compression.
    seed : int
        Seeds the initial weights, the per-epoch shuffle and the quantizers.
    epochs, batch, lr, momentum, hidden : int or float
        The training run: ``batch`` samples per rank and step, SGD (plain by default: heavy-ball
        momentum multiplies the compression error that error feedback releases late; see docs/torch.md).
    bucket_cap_mb : float, optional
        DDP's bucket size (default DDP's). DDP puts every parameter of this
        small model into one bucket unless ``find_unused_parameters`` (then
        ``bucket_cap_mb=0.02`` makes two buckets).
    find_unused_parameters : bool
        Passed to DDP.
    min_compress_numel : int
        Buckets with fewer elements are averaged exactly.
    nonblocking : bool
        Passed to the hook's state (default: on the progress thread).
    comm : mpi4py.MPI.Intracomm
        The ranks of the default process group.
    data : tuple of numpy.ndarray, optional
        ``(X_train, y_train, X_test, y_test)`` (default :func:`load_digits`).

    Returns
    -------
    dict
        ``compression``, ``seed``, ``accuracy`` (test, %), ``loss`` (last
        epoch's mean training loss), ``seconds``, ``bytes_sent`` and
        ``bytes_uncompressed`` (this rank, the hook's; 0 for ``gloo``),
        ``params`` (the trained parameters, flat).
    """
    smt.init_process_group_from_mpi(comm=comm)
    P, rank = comm.Get_size(), comm.Get_rank()
    X, y, X_test, y_test = data if data is not None else load_digits()
    torch.manual_seed(seed)
    model = make_model(X.shape[1], hidden, int(y.max()) + 1)
    ddp = DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb, find_unused_parameters=find_unused_parameters)
    state = None
    if compression != BASELINE:
        state = smt.ScaleMLHookState(comm, compression, min_compress_numel=min_compress_numel, seed=seed,
                                     nonblocking=nonblocking)
        ddp.register_comm_hook(state, smt.allreduce_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=momentum)
    per_rank = len(y) // P  # every rank takes as many steps (DDP's collectives must match)
    steps = math.ceil(per_rank / batch)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    comm.Barrier()
    t0 = time.perf_counter()
    loss_sum = 0.0
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(y))[rank::P][:per_rank]  # DistributedSampler
        loss_sum = 0.0
        for s in range(steps):
            idx = torch.from_numpy(order[s * batch:(s + 1) * batch])
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(ddp(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            loss_sum += loss.detach().item()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        pred = model(torch.from_numpy(X_test)).argmax(1).numpy()
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()
    return {"compression": compression, "seed": seed, "accuracy": 100.0 * float((pred == y_test).mean()),
            "loss": loss_sum / steps, "seconds": seconds,
            "bytes_sent": state.stats["bytes_sent"] if state else 0,
            "bytes_uncompressed": state.stats["bytes_uncompressed"] if state else 0, "params": params,
            "buckets": len(state._numel) if state else 0}


def main(argv: list[str] | None = None) -> None:
    """Command line: train with each compression and seed, print the table on rank 0."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compression", nargs="+", default=[BASELINE, "none", "qsgd4", "onebit", "topk0.01"],
                   help=f"'{BASELINE}' (plain DDP) and hook compressions (see scaleml.torch.HOOK_COMPRESSIONS)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch", type=int, default=32, help="samples per rank and step")
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--min-compress-numel", type=int, default=1024)
    p.add_argument("--blocking", action="store_true", help="run the hook's collectives inside the hook")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    for c in args.compression:  # bad names fail before any training
        if c != BASELINE:
            smt.ScaleMLHookState(comm, c)
    data = load_digits()
    rows = []
    for c in args.compression:
        for seed in args.seeds:
            r = train(c, seed=seed, epochs=args.epochs, batch=args.batch, lr=args.lr, momentum=args.momentum,
                      hidden=args.hidden,
                      min_compress_numel=args.min_compress_numel, nonblocking=not args.blocking,
                      comm=comm, data=data)
            sent = comm.reduce(r["bytes_sent"], root=0)
            full = comm.reduce(r["bytes_uncompressed"], root=0)
            rows.append((c, seed, r["accuracy"], r["loss"], r["seconds"], sent, full))
            if comm.rank == 0:
                ratio = f"{full / sent:.1f}x" if sent else "-"
                print(f"ranks={comm.size} compression={c} seed={seed} accuracy={r['accuracy']:.2f} "
                      f"loss={r['loss']:.4f} seconds={r['seconds']:.2f} bytes_sent={sent} reduction={ratio}",
                      flush=True)
    if comm.rank == 0:
        print(f"\n| compression | test accuracy % (mean over seeds {args.seeds}) | min | max | bytes sent vs exact |")
        print("|---|---|---|---|---|")
        for c in args.compression:
            mine = [r for r in rows if r[0] == c]
            acc = [r[2] for r in mine]
            sent, full = sum(r[5] for r in mine), sum(r[6] for r in mine)
            ratio = f"1/{full / sent:.1f}" if sent else "(gloo)"
            print(f"| {c} | {np.mean(acc):.2f} | {min(acc):.2f} | {max(acc):.2f} | {ratio} |")


if __name__ == "__main__":
    main()
