"""scaleml-train under mpiexec: outputs, checkpoint and resume, and one clear error on every rank."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import run_mpi

SMALL = ["--dataset", "synthetic", "--synthetic-samples", "600", "--synthetic-features", "8", "--synthetic-classes",
         "3", "--model", "mlp", "--hidden", "8", "--batch-size", "32", "--compression", "topk0.1",
         "--min-compress-size", "16", "--quiet"]

# main() on every rank, then each rank's exit status on a line of its own (what sys.exit would return)
WRAPPER = ("import sys; from mpi4py import MPI; from scaleml.train.cli import main; rc = main(sys.argv[1:]); "
           "print(f'[rank {MPI.COMM_WORLD.rank} exits {rc}]', flush=True); sys.exit(rc)")


def fails_once_everywhere(nprocs: int, args: list[str], message: str) -> None:
    """Run the CLI; check exit status 2 on every rank and exactly one error line (rank 0's) with ``message``."""
    result = run_mpi(nprocs, ["-c", WRAPPER, *args], timeout=120)
    out = result.stdout  # the ranks' outputs, interleaved by mpiexec (not always at line ends)
    assert out.count("scaleml-train: error:") == 1, out
    assert "scaleml-train: error: " + message in out, out
    assert "Traceback" not in out, out
    for r in range(nprocs):
        assert f"[rank {r} exits 2]" in out, out
    assert result.returncode != 0


@pytest.mark.parametrize("nprocs", [2, 4])
def test_outputs_checkpoint_resume_and_errors(nprocs, tmp_path):
    ck = tmp_path / "ck"
    metrics, table, plot = tmp_path / "m.json", tmp_path / "m.csv", tmp_path / "p.png"
    base = [*SMALL, "--checkpoint", str(ck)]
    result = run_mpi(nprocs, ["-m", "scaleml.train", *base, "--epochs", "2", "--metrics", str(metrics), "--csv",
                              str(table), "--plot", str(plot)], timeout=180)
    assert result.returncode == 0, result.stdout
    summary = json.loads(metrics.read_text())
    assert summary["world_size"] == nprocs and [e["epoch"] for e in summary["epochs"]] == [1, 2]
    last = summary["final"]
    for key in ("train_loss", "test_loss", "test_accuracy", "time_compute", "time_reduce", "time_collective",
                "bytes_sent_per_rank", "bytes_total_per_rank", "elapsed"):
        assert key in last and np.isfinite(last[key]), key
    assert last["bytes_sent_per_rank"] > 0 and summary["buckets"]
    rows = list(csv.DictReader(table.open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in ck.iterdir()) == sorted(["meta.json", *(f"rank{r}.npz" for r in range(nprocs))])

    # resume to epoch 3: the metrics hold all three epochs, the first two unchanged
    result = run_mpi(nprocs, ["-m", "scaleml.train", *base, "--epochs", "3", "--resume", "--metrics", str(metrics)],
                     timeout=180)
    assert result.returncode == 0, result.stdout
    resumed = json.loads(metrics.read_text())["epochs"]
    assert [e["epoch"] for e in resumed] == [1, 2, 3]
    assert resumed[1]["test_loss"] == summary["epochs"][1]["test_loss"]

    # invalid configurations: one message, exit status 2 on every rank, no traceback, no hang
    fails_once_everywhere(nprocs, [*SMALL, "--compression", "gzip"],
                          "argument --compression: unknown compression 'gzip'")
    npz = tmp_path / "three_classes.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, X=rng.standard_normal((40, 3)), y=rng.integers(0, 3, 40))
    fails_once_everywhere(nprocs, ["--dataset", str(npz), "--model", "logistic"],
                          "the labels of three_classes.npz must lie in [0, 1] for --model logistic")
    fails_once_everywhere(nprocs, ["--dataset", "synthetic", "--synthetic-samples", str(nprocs - 1)],
                          f"{nprocs - 1} training samples cannot be sharded over {nprocs} ranks")
    fails_once_everywhere(nprocs, [*SMALL, "--resume", "--checkpoint", str(tmp_path / "none")],
                          f"no checkpoint to resume from: '{tmp_path / 'none'}' is not a directory")
    fails_once_everywhere(nprocs, [*base, "--resume", "--epochs", "4", "--lr", "0.3"],
                          f"the checkpoint in '{ck}' is for another configuration (lr: 0.1 -> 0.3)")
    # another number of ranks: resharded, said in one line (on a copy: the checks below need the original)
    other = 4 if nprocs == 2 else 2
    moved = tmp_path / "ck_other"
    shutil.copytree(ck, moved)
    loud = [a for a in SMALL if a != "--quiet"]
    result = run_mpi(other, ["-m", "scaleml.train", *loud, "--checkpoint", str(moved), "--resume", "--epochs", "4"],
                     timeout=180)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count(f"resuming a checkpoint of {nprocs} ranks at {other} ranks: residuals resharded, "
                               "sum conserved") == 1, result.stdout
    assert json.loads((moved / "meta.json").read_text())["world_size"] == other
    # one rank's file corrupt: every rank fails, naming that rank
    victim = ck / f"rank{nprocs - 1}.npz"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    fails_once_everywhere(nprocs, [*base, "--resume", "--epochs", "4"],
                          f"rank {nprocs - 1}: corrupt checkpoint file {victim}")


def test_help_prints_once_and_exits_zero():
    result = run_mpi(2, ["-m", "scaleml.train", "--help"], timeout=60)
    assert result.returncode == 0
    assert result.stdout.count("usage: scaleml-train") == 1 and "--compression" in result.stdout
