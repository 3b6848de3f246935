"""The ScaleML DDP communication hook (scaleml.torch) under mpiexec at 1 to 4 ranks (tests/mpi/mpi_torch_hook.py).

Skipped, with the reason, when PyTorch is not installed. The accuracy margin and how it was chosen are in that
module and in docs/torch.md.
"""

from __future__ import annotations

import pytest
from conftest import run_pytest_under_mpi

pytest.importorskip("torch", reason="PyTorch not installed (make install-torch)")
pytest.importorskip("sklearn", reason="scikit-learn not installed (the digits dataset)")


@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_torch_hook_under_mpi(nprocs):
    out = run_pytest_under_mpi(nprocs, "mpi_torch_hook.py", timeout=900)
    assert " skipped" not in out and " passed" in out, out[-3000:]  # torch is here: every test must have run


@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_torch_hook_policy_and_process_group_exact_under_mpi(nprocs):
    out = run_pytest_under_mpi(nprocs, "mpi_torch_policy.py", timeout=600)
    assert " skipped" not in out and " passed" in out, out[-3000:]
