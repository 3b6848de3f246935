"""Run each MPI test module under mpiexec at P = 1, 2, 3, 4, 5 and 8 (oversubscribed), with a timeout."""

from __future__ import annotations

import pytest
from conftest import RANK_COUNTS, run_pytest_under_mpi


@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_sparse_allreduce_matches_dense_reference(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_sparse_allreduce.py", timeout=900)


@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_bad_input_raises_on_every_rank(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_bad_input.py", timeout=300)


@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_comm_is_a_drop_in_for_mpi4py(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_comm_dropin.py", timeout=600)


@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_comm_matches_mpi4py_layouts_lengths_and_zero_signs(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_dropin_mpi4py_parity.py", timeout=300)


@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_quantized_allreduce_within_its_bounds(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_quantized.py", timeout=600)


@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_topk_allreduce_sums_every_ranks_top_k(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_topk_allreduce.py", timeout=600)


@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_adaptive_allreduce_is_identical_everywhere_and_conserves_mass(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_adaptive_allreduce.py", timeout=600)


@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_sparse_algorithms_switch_to_dense_quantized(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_sparse_quantized_switch.py", timeout=300)
