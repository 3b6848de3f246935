"""Time to accuracy of a PyTorch DDP job: plain DDP (gloo), torch's ``powerSGD_hook`` and ScaleML's hook.

    mpiexec -n 4 .venv/bin/python bench/ddp_time_to_accuracy.py --json out.json

Every configuration trains the same MLP (``--layers``, the first width is the
data's features) from the same initial weights on the same synthetic
classification data (``scaleml.train.data.synthetic_dataset``, each rank its
contiguous shard, the same batches in the same order), with SGD and momentum,
for ``--epochs`` epochs, and evaluates the test accuracy after each epoch
(rank 0's replica, which every configuration keeps identical on all ranks).

The first configuration must be the exact one (``ddp_gloo``): its final test
accuracy less ``--tolerance`` (1 point) is the target, fixed before any
compressed run. For each run the table gives its training time to the target
(the slowest rank's step times summed, evaluations excluded), the ratio
against the exact run's, its final accuracy, and whether it is within the
tolerance of the exact run's.

Configurations: ``ddp_gloo`` (plain DDP); ``torch_powersgdR`` (torch's
``powerSGD_hook``, rank R, ``start_powerSGD_iter`` = ``--start-iter``, warm
start and error feedback as torch's defaults); ``scaleml_C`` (ScaleML's hook
with compression C: ``powersgdR``, ``onebit``, ``qsgd4``, ``topk0.01`` ...).
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
from ddp_step_time import build_model  # noqa: E402  (bench/, this script's folder)
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import scaleml.torch as smt  # noqa: E402
from scaleml.train.data import shard, synthetic_dataset  # noqa: E402

world = MPI.COMM_WORLD


def wrap(model: torch.nn.Module, config: str, bucket_mb: float, start_iter: int) -> torch.nn.Module:
    """``model`` in DDP with the configuration's communication hook."""
    ddp = DistributedDataParallel(model, bucket_cap_mb=bucket_mb)
    if config.startswith("torch_powersgd"):
        state = powerSGD_hook.PowerSGDState(process_group=None,
                                            matrix_approximation_rank=int(config[len("torch_powersgd"):]),
                                            start_powerSGD_iter=start_iter)
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    elif config.startswith("scaleml_"):
        ddp.register_comm_hook(smt.ScaleMLHookState(compression=config[len("scaleml_"):]), smt.allreduce_hook)
    elif config != "ddp_gloo":
        raise SystemExit(f"unknown config {config!r}")
    return ddp


def train(config: str, args: argparse.Namespace, part, layers: list[int]) -> list[dict[str, float]]:
    """Epoch records (``epoch``, ``elapsed`` training seconds so far, ``test_accuracy``) of one run."""
    model = wrap(build_model(layers), config, args.bucket_mb, args.start_iter)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    X, y = torch.from_numpy(part.X), torch.from_numpy(part.y)
    X_test, y_test = torch.from_numpy(part.X_test), torch.from_numpy(part.y_test)
    steps = len(X) // args.batch
    elapsed, history = 0.0, []
    for epoch in range(1, args.epochs + 1):
        order = torch.from_numpy(np.random.default_rng([args.seed, epoch]).permutation(len(X)))
        times = []
        model.train()
        for s in range(steps):
            batch = order[s * args.batch:(s + 1) * args.batch]
            world.Barrier()
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=False)
            loss_fn(model(X[batch]), y[batch]).backward()
            optimizer.step()
            times.append(time.perf_counter() - t0)
        worst = np.empty(len(times))
        world.Allreduce(np.array(times), worst, MPI.MAX)
        elapsed += float(worst.sum())
        model.eval()
        with torch.no_grad():
            correct = int((model(X_test).argmax(dim=1) == y_test).sum())
        accuracy = world.allreduce(correct) / part.n_test_total
        history.append({"epoch": epoch, "elapsed": elapsed, "test_accuracy": accuracy})
        if world.rank == 0:
            print(f"#   {config} epoch {epoch}: {elapsed:.2f} s, test accuracy {accuracy:.4f}", flush=True)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="1024,2048,1024,10", help="MLP widths: features first, classes last")
    parser.add_argument("--samples", type=int, default=8192, help="training samples over all ranks")
    parser.add_argument("--batch", type=int, default=32, help="samples per rank per step")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.01, help="accuracy below the exact run's final")
    parser.add_argument("--start-iter", type=int, default=10, help="exact steps before PowerSGD compresses")
    parser.add_argument("--configs", nargs="+",
                        default=["ddp_gloo", "torch_powersgd4", "scaleml_powersgd4", "scaleml_onebit",
                                 "scaleml_qsgd4", "scaleml_topk0.01"])
    parser.add_argument("--bucket-mb", type=float, default=25.0, help="DDP's bucket_cap_mb")
    parser.add_argument("--json", help="write the runs and the table here (rank 0)")
    args = parser.parse_args()
    if args.configs[0] != "ddp_gloo":
        raise SystemExit("the first configuration must be ddp_gloo: the exact run sets the target")
    torch.set_num_threads(1)  # one core per rank, as the other benchmarks
    smt.init_process_group_from_mpi("gloo")
    layers = [int(w) for w in args.layers.split(",")]
    data = synthetic_dataset(args.seed, args.samples, layers[0], "classification", layers[-1])
    part = shard(data, world.rank, world.size)
    if world.rank == 0:
        print(f"# {world.size} ranks, MLP {args.layers}, {part.n_train_total} training samples, batch {args.batch} "
              f"per rank, {args.epochs} epochs; training time = the slowest rank's step times summed", flush=True)
    runs, target = [], None
    for config in args.configs:
        torch.manual_seed(args.seed)
        history = train(config, args, part, layers)
        if target is None:
            target = history[-1]["test_accuracy"] - args.tolerance
        runs.append({"config": config, "epochs": history})
    exact_time = next((h["elapsed"] for h in runs[0]["epochs"] if h["test_accuracy"] >= target), None)
    exact_final = runs[0]["epochs"][-1]["test_accuracy"]
    rows = []
    for run in runs:
        reached = next((h for h in run["epochs"] if h["test_accuracy"] >= target), None)
        final = run["epochs"][-1]["test_accuracy"]
        rows.append({"config": run["config"], "epoch_at_target": reached["epoch"] if reached else None,
                     "seconds_to_target": reached["elapsed"] if reached else None,
                     "speedup_vs_exact": exact_time / reached["elapsed"] if reached and exact_time else None,
                     "seconds_per_epoch": run["epochs"][-1]["elapsed"] / len(run["epochs"]),
                     "final_accuracy": final, "within_tolerance": final >= exact_final - args.tolerance})
    if world.rank == 0:
        print(f"# target test accuracy {target:.4f} (exact run's final {exact_final:.4f} - {args.tolerance})")
        print("| config | s/epoch | epoch at target | s to target | vs exact | final accuracy | within 1 point |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            at = "not reached" if r["epoch_at_target"] is None else f"{r['epoch_at_target']}"
            secs = "-" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.2f}"
            ratio = "-" if r["speedup_vs_exact"] is None else f"{r['speedup_vs_exact']:.2f}x"
            print(f"| {r['config']} | {r['seconds_per_epoch']:.2f} | {at} | {secs} | {ratio} | "
                  f"{r['final_accuracy']:.4f} | {'yes' if r['within_tolerance'] else 'no'} |", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"argv": sys.argv, "ranks": world.size, "layers": layers, "target": target,
                           "torch": torch.__version__, "runs": runs, "rows": rows}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
