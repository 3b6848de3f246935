"""Time per training step of a PyTorch DDP job: plain DDP (gloo) against DDP with ScaleML's hook.

    mpiexec -n 4 .venv/bin/python bench/ddp_step_time.py --json out.json

One process per rank; each configuration builds the same MLP (``--layers``),
wraps it in ``DistributedDataParallel`` (gloo process group from
:func:`scaleml.torch.init_process_group_from_mpi`) and times whole steps
(forward, backward with the gradient AllReduce, SGD update) on a fixed
synthetic batch. Rank 0 prints, per configuration, the median over steps of
the slowest rank's step time and its ratio against plain DDP measured in the
same run:

- ``ddp_gloo``: plain DDP, float32 buckets through gloo's all_reduce;
- ``ddp_gloo_fp16``: DDP with torch's own ``fp16_compress_hook`` (gloo, float16);
- ``ddp_powersgd<R>``: DDP with torch's ``powerSGD_hook`` of rank R (gloo; error feedback and warm start,
  torch's defaults), PowerSGD from step ``--powersgd-start``;
- ``scaleml_<c>``: DDP with ``scaleml.torch.allreduce_hook`` and compression
  ``c`` (``none``, ``fp16``, ``qsgd4``, ``onebit``, ``topk0.01``, ``powersgd4``, ``powersgd4_q8`` ...),
  over MPI; ScaleML's PowerSGD also from step ``--powersgd-start``, as torch's. Options after ``@``:
  ``scaleml_none@blocking`` (the collective inside the hook, not on ScaleML's progress thread),
  ``scaleml_none@pg`` (``exact="process_group"``: exact buckets through the process group's all_reduce, what
  ``exact="auto"`` runs under DDP) and ``scaleml_none@mpi`` (``exact="mpi"``: ScaleML's MPI_Allreduce);
- ``ddp_gloo_again``: plain DDP measured a second time, the A/A control of the run's noise.

``compute`` is the same step without DDP (no communication): the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from mpi4py import MPI

os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

import torch  # noqa: E402  (after the log level, which torch reads at import)
import torch.distributed as dist  # noqa: E402
from timing import slowest_median  # noqa: E402  (bench/timing.py, this script's folder)
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import scaleml.torch as smt  # noqa: E402

world = MPI.COMM_WORLD


def build_model(layers: list[int]) -> torch.nn.Module:
    torch.manual_seed(0)
    modules: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
        modules.append(torch.nn.Linear(a, b))
        if i < len(layers) - 2:
            modules.append(torch.nn.ReLU())
    return torch.nn.Sequential(*modules)


def time_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int) -> list[float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for i in range(warmup + steps):
        world.Barrier()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        loss_fn(model(x), y).backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="1024,2048,1024,10", help="MLP widths, input first")
    parser.add_argument("--batch", type=int, default=32, help="samples per rank per step")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--configs", nargs="+",
                        default=["compute", "ddp_gloo", "ddp_gloo_fp16", "ddp_powersgd1", "ddp_powersgd4",
                                 "scaleml_none", "scaleml_none@mpi", "scaleml_none@mpi@blocking", "scaleml_fp16",
                                 "scaleml_qsgd4", "scaleml_onebit", "scaleml_topk0.01",
                                 "scaleml_powersgd1", "scaleml_powersgd4", "scaleml_powersgd1_q8",
                                 "scaleml_powersgd4_q8", "ddp_gloo_again"])
    parser.add_argument("--bucket-mb", type=float, default=25.0, help="DDP's bucket_cap_mb")
    parser.add_argument("--powersgd-start", type=int, default=2,
                        help="the first PowerSGD step of torch's and ScaleML's PowerSGD rows (before it: exact); "
                             "torch's minimum with error feedback, within the warm-up")
    parser.add_argument("--json", help="write the rows here (rank 0)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per rank, as the other benchmarks
    rank, P = world.Get_rank(), world.Get_size()
    smt.init_process_group_from_mpi("gloo")
    layers = [int(w) for w in args.layers.split(",")]
    gen = torch.Generator().manual_seed(1 + rank)
    x = torch.randn(args.batch, layers[0], generator=gen)
    y = torch.randint(0, layers[-1], (args.batch,), generator=gen)
    params = sum(p.numel() for p in build_model(layers).parameters())
    rows, baseline = [], None
    if rank == 0:
        print(f"# {P} ranks, MLP {args.layers} ({params} parameters, {params * 4 / 2**20:.1f} MiB of float32 "
              f"gradients), batch {args.batch} per rank; median over {args.steps} steps of the slowest rank")
        print(f"{'config':>20} {'step ms':>9} {'vs ddp_gloo':>12}")
    for config in args.configs:
        model = build_model(layers)
        if config != "compute":
            model = DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb)
            if config == "ddp_gloo_fp16":
                from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

                model.register_comm_hook(None, default_hooks.fp16_compress_hook)
            elif config.startswith("ddp_powersgd"):
                from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

                torch_state = powerSGD_hook.PowerSGDState(
                    process_group=None, matrix_approximation_rank=int(config[len("ddp_powersgd"):]),
                    start_powerSGD_iter=args.powersgd_start)
                model.register_comm_hook(torch_state, powerSGD_hook.powerSGD_hook)
            elif config.startswith("scaleml_"):
                name, *options = config[len("scaleml_"):].split("@")
                unknown = set(options) - {"blocking", "pg", "mpi"}
                if unknown:
                    raise SystemExit(f"unknown option(s) {sorted(unknown)} of config {config!r}")
                state = smt.ScaleMLHookState(compression=name, nonblocking="blocking" not in options,
                                             exact="process_group" if "pg" in options else
                                             "mpi" if "mpi" in options else "auto")
                if state.powersgd is not None:
                    state.powersgd.start_iter = args.powersgd_start
                model.register_comm_hook(state, smt.allreduce_hook)
            elif config not in ("ddp_gloo", "ddp_gloo_again"):
                raise SystemExit(f"unknown config {config!r}")
        step = slowest_median(time_steps(model, x, y, args.steps, args.warmup))
        if config == "ddp_gloo":
            baseline = step
        rows.append({"config": config, "step_seconds": step})
        if rank == 0:
            ratio = f"{baseline / step:.2f}x" if baseline else "-"
            print(f"{config:>20} {step * 1e3:>9.1f} {ratio:>12}", flush=True)
    if baseline:
        for row in rows:
            row["speedup_vs_ddp_gloo"] = baseline / row["step_seconds"]
    if rank == 0 and args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "ranks": P, "layers": layers, "parameters": params, "batch": args.batch,
                       "steps": args.steps, "torch": torch.__version__, "rows": rows}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
