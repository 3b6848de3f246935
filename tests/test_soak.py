"""A short soak (bench/soak.py): randomized calls of every collective on several communicators, interleaved
with plain MPI, one in ten failing on purpose on one rank; every failure raises everywhere, every result is
right, nothing hangs. The long run and its figures: docs/reliability.md."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, run_mpi


@pytest.mark.parametrize("nprocs,seed", [(2, 11), (3, 12), (5, 13)])
def test_short_soak(nprocs, seed, tmp_path):
    out = tmp_path / "soak.json"
    args = [str(ROOT / "bench" / "soak.py"), "--calls", "250", "--seed", str(seed), "--json", str(out)]
    result = run_mpi(nprocs, args, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    totals = json.loads(out.read_text())
    assert totals["not_raised_everywhere"] == 0 and totals["wrong_results"] == 0
    assert totals["injected_failures"] >= 5 and totals["raised_on_every_rank"] == totals["injected_failures"]
    assert totals["results_checked"] >= 200
    assert set(totals["calls_by_kind"]) == {"sparse", "quantized", "topk", "adaptive", "dropin", "mpi"}
