"""Time per step of a PyTorch DDP job whose gradients are sparse by nature: ``torch.nn.EmbeddingBag`` -> MLP.

    mpiexec -n 4 .venv/bin/python bench/ddp_embedding.py --vocab 100000 --dim 32 --json out.json

The data are bags of ``zipf-text`` (:func:`scaleml.train.data.zipf_text_dataset`):
Zipf-distributed token ids, so a step touches a few hundred of the embedding's
rows. Every configuration builds the same model (``EmbeddingBag(vocab, dim,
mode)`` -> ``Linear(dim, hidden)`` -> ReLU -> ``Linear(hidden, classes)``),
wraps it in ``DistributedDataParallel`` (gloo process group) and times whole
steps over the same batches of this rank's shard. Rank 0 prints the median of
the slowest rank's step time, the gradient density DDP's buckets hold (non-zeros
per element, this rank), the bytes ScaleML's hook sent per step, and the largest
difference of the final parameters from plain DDP's:

- ``ddp_gloo``: plain DDP, dense embedding gradients (``sparse=False``), buckets through gloo's all_reduce;
- ``scaleml_<c>``: DDP with ``scaleml.torch.allreduce_hook`` and compression ``c``: ``sparse`` sends each bucket's
  non-zeros (exact), ``dropin`` lets the engine choose, ``none``, ``topk0.01``, ``qsgd4`` ...;
- ``ddp_gloo_sparse_grad``: plain DDP with ``EmbeddingBag(sparse=True)``: DDP all-reduces the sparse gradient
  tensors itself (gloo's sparse allreduce), outside any bucket;
- ``scaleml_sparse_grad``: ``sparse=True`` with ScaleML's hook. DDP (torch 2.13) gives a sparse gradient a bucket
  of its own and hands the hook the sparse COO tensor as ``bucket.buffer()``; ScaleML's hook sums its rows exactly
  with ``scaleml.sparse_allreduce`` and returns a sparse tensor (a failure would be printed in the row).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from mpi4py import MPI

os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

import torch  # noqa: E402  (after the log level, which torch reads at import)
import torch.distributed as dist  # noqa: E402
from timing import slowest_median  # noqa: E402  (bench/timing.py, this script's folder)
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import scaleml.torch as smt  # noqa: E402
from scaleml.train.data import shard, zipf_text_dataset  # noqa: E402

world = MPI.COMM_WORLD


class BagClassifier(torch.nn.Module):
    def __init__(self, vocab: int, dim: int, hidden: int, classes: int, mode: str, sparse: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.EmbeddingBag(vocab, dim, mode=mode, sparse=sparse)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(ids, offsets))


def bags(X: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """EmbeddingBag's flat ids and offsets of rows of ids padded with -1."""
    mask = X >= 0
    offsets = np.concatenate([[0], np.cumsum(mask.sum(axis=1))[:-1]])
    return torch.from_numpy(X[mask].astype(np.int64)), torch.from_numpy(offsets.astype(np.int64))


def counting_hook(counts: dict[str, int]):
    """ScaleML's hook, counting the non-zeros and elements of the buckets it is handed."""
    def hook(state: smt.ScaleMLHookState, bucket):  # noqa: ANN001, ANN202 (DDP's hook signature)
        buffer = bucket.buffer()
        if not buffer.is_sparse:  # with sparse=True DDP hands the hook the sparse gradient as its bucket
            counts["nonzeros"] += int(torch.count_nonzero(buffer))
            counts["elements"] += buffer.numel()
        return smt.allreduce_hook(state, bucket)
    return hook


def run(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], warmup: int,
        lr: float) -> list[float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for i, (ids, offsets, y) in enumerate(batches):
        world.Barrier()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        loss_fn(model(ids, offsets), y).backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=100000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--bag-length", type=int, default=20)
    parser.add_argument("--mode", choices=("mean", "sum"), default="sum")
    parser.add_argument("--batch", type=int, default=32, help="samples per rank per step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--configs", nargs="+", default=["ddp_gloo", "scaleml_none", "scaleml_sparse", "scaleml_dropin",
                                                         "scaleml_topk0.01", "scaleml_qsgd4", "ddp_gloo_sparse_grad",
                                                         "scaleml_sparse_grad"])
    parser.add_argument("--bucket-mb", type=float, default=25.0, help="DDP's bucket_cap_mb")
    parser.add_argument("--json", help="write the rows here (rank 0)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per rank, as the other benchmarks
    rank, P = world.Get_rank(), world.Get_size()
    smt.init_process_group_from_mpi("gloo")
    steps = args.warmup + args.steps
    data = zipf_text_dataset(0, steps * args.batch * P, args.vocab, args.bag_length, args.classes)
    part = shard(data, rank, P)
    batches = [(*bags(part.X[s * args.batch:(s + 1) * args.batch]),
                torch.from_numpy(part.y[s * args.batch:(s + 1) * args.batch])) for s in range(steps)]
    rows, baseline, reference = [], None, None
    if rank == 0:
        print(f"# {P} ranks, EmbeddingBag({args.vocab}, {args.dim}, mode={args.mode}) -> {args.hidden} -> "
              f"{args.classes}, batch {args.batch} per rank, bags of {(args.bag_length + 1) // 2} to "
              f"{args.bag_length} Zipf tokens; median over {args.steps} steps of the slowest rank")
        print(f"{'config':>22} {'step ms':>9} {'vs ddp_gloo':>12} {'density':>9} {'hook B/step':>12} "
              f"{'max |diff|':>11}")
    for config in args.configs:
        sparse_grad = config.endswith("_sparse_grad")
        model = DistributedDataParallel(BagClassifier(args.vocab, args.dim, args.hidden, args.classes, args.mode,
                                                      sparse_grad), bucket_cap_mb=args.bucket_mb)
        counts = {"nonzeros": 0, "elements": 0}
        state = None
        row: dict = {"config": config}
        if config.startswith("scaleml_"):
            state = smt.ScaleMLHookState(compression="sparse" if sparse_grad else config[len("scaleml_"):])
            model.register_comm_hook(state, counting_hook(counts))
        elif config not in ("ddp_gloo", "ddp_gloo_sparse_grad"):
            raise SystemExit(f"unknown config {config!r}")
        try:
            times = run(model, batches, args.warmup, args.lr)
            failed = None
        except (RuntimeError, TypeError) as exc:  # the hook refuses sparse COO buckets, on every rank
            times, failed = [float("nan")] * args.steps, str(exc).splitlines()[0]
        step = slowest_median(times)
        if config == "ddp_gloo":
            baseline = step
            reference = [p.detach().clone() for p in model.parameters()]
        diff = None
        if reference is not None and failed is None:
            diff = max(float((p.detach() - q).abs().max()) for p, q in zip(model.parameters(), reference))
        density = counts["nonzeros"] / counts["elements"] if counts["elements"] else None
        sent = state.stats["bytes_sent"] / len(batches) if state is not None and failed is None else None
        row.update(step_seconds=step, density=density, hook_bytes_per_step=sent, max_abs_diff_vs_ddp_gloo=diff,
                   error=failed)
        rows.append(row)
        if rank == 0:
            ratio = f"{baseline / step:.2f}x" if baseline and step == step else "-"
            print(f"{config:>22} {step * 1e3:>9.1f} {ratio:>12} {density if density is not None else '-':>9.3}"
                  if density is not None else f"{config:>22} {step * 1e3:>9.1f} {ratio:>12} {'-':>9}", end="")
            print(f" {sent if sent is not None else '-':>12} {diff if diff is not None else '-':>11}"
                  + (f"  error: {failed}" if failed else ""), flush=True)
    if rank == 0 and args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "ranks": P, "vocab": args.vocab, "dim": args.dim, "batch": args.batch,
                       "steps": args.steps, "torch": torch.__version__, "rows": rows}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
