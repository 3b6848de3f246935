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
def test_a_bad_argument_of_any_type_raises_on_every_rank(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_bad_arguments_any_type.py", timeout=300)


@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_comm_is_a_drop_in_for_mpi4py(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_comm_dropin.py", timeout=600)


@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_comm_is_an_intracomm_and_nonblocking_collectives_overlap(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_nonblocking.py", timeout=600)


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
def test_adaptive_registry_entry_is_the_python_algorithm_bit_for_bit(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_adaptive_c_path.py", timeout=600)


@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_cuda_arrays_take_every_collective_on_the_emulated_device(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_device_paths.py", timeout=600, env={"SCALEML_CUDA_EMULATE": "1"})


@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_sparse_algorithms_switch_to_dense_quantized(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_sparse_quantized_switch.py", timeout=300)


# Up to 3 ranks (3: uneven shards): its ~9,000 small Allreduces are latency-bound, and 4 or more ranks on a
# 2-core machine measure the scheduler (5 s to 50 s at 4 ranks, by load).
@pytest.mark.parametrize("nprocs", [1, 2, 3])
def test_zipml_double_sampling_reaches_least_squares(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_zipml_linear.py", timeout=300)


# scaleml.train (issue 9): at 2 and 4 ranks, each module well under 20 s at 4 oversubscribed ranks
TRAIN_RANK_COUNTS = [2, 4]


@pytest.mark.parametrize("nprocs", TRAIN_RANK_COUNTS)
def test_gradient_reducer_averages_identically_everywhere(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_train_reducer.py", timeout=300)


@pytest.mark.parametrize("nprocs", TRAIN_RANK_COUNTS)
def test_training_loss_decreases_and_replicas_stay_identical(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_train.py", timeout=300)


@pytest.mark.parametrize("nprocs", TRAIN_RANK_COUNTS)
def test_training_resumes_bit_for_bit(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_train_resume.py", timeout=300)


# A checkpoint of P ranks resumed at P' (issue 22): 4 -> 2, 2 -> 3 and 3 -> 5 on sub-communicators of one 5-rank
# job (the unused ranks of each pair sleep). About 6 s for the whole module on the idle 2-core machine.
@pytest.mark.parametrize("nprocs", [5])
def test_training_resumes_at_another_number_of_ranks(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_train_reshard.py", timeout=300)


@pytest.mark.parametrize("nprocs", TRAIN_RANK_COUNTS)
@pytest.mark.parametrize("group", ["dense", "sparsifiers"])
def test_compressors_keep_the_exact_accuracy_on_digits(nprocs, group):
    # two jobs (the quantizers and lossless paths; top-k, 1-bit, adaptive), each with its own exact run; 60 epochs
    # of plain SGD: 6 to 11 s each at 2 and 4 ranks on the idle 2-core machine, 25 to 35 s under load
    selection = "not (topk or onebit or adaptive)" if group == "dense" else "topk or onebit or adaptive"
    run_pytest_under_mpi(nprocs, "mpi_train_accuracy.py", timeout=600, extra=("-k", selection))


@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_every_collective_goes_through_the_one_call_path(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_call_path.py", timeout=300)


@pytest.mark.parametrize("ranks_per_node", ["1", "2", "3"])
@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_hierarchical_dense_on_emulated_nodes(nprocs, ranks_per_node):
    run_pytest_under_mpi(nprocs, "mpi_hierarchical.py", timeout=300, env={"SCALEML_RANKS_PER_NODE": ranks_per_node})


@pytest.mark.parametrize("nprocs", [4])
def test_hierarchical_dense_on_mpis_nodes(nprocs):
    """No emulation: MPI's shared-memory node holds every rank here, the one-node (intra-node) path."""
    run_pytest_under_mpi(nprocs, "mpi_hierarchical.py", timeout=300)


@pytest.mark.parametrize("nprocs", TRAIN_RANK_COUNTS)
def test_embedding_bag_sparse_is_exact_and_sends_the_touched_rows(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_train_embedding.py", timeout=300)


@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_gradient_reducer_compression_policy(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_train_policy.py", timeout=300)


@pytest.mark.parametrize("ranks_per_node", ["1", "2", "3"])
@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_hierarchical_quantized_on_emulated_nodes(nprocs, ranks_per_node):
    """3 ranks per node makes unequal nodes at 4, 5 and 8 ranks."""
    run_pytest_under_mpi(nprocs, "mpi_hierarchical_quantized.py", timeout=300,
                         env={"SCALEML_RANKS_PER_NODE": ranks_per_node})


@pytest.mark.parametrize("nprocs", [4])
def test_hierarchical_quantized_on_mpis_nodes(nprocs):
    """No emulation: MPI's one node here, the exact intra-node path."""
    run_pytest_under_mpi(nprocs, "mpi_hierarchical_quantized.py", timeout=300)


@pytest.mark.parametrize("ranks_per_node", ["1", "2", "3"])
@pytest.mark.parametrize("nprocs", RANK_COUNTS)
def test_hierarchical_sparse_on_emulated_nodes(nprocs, ranks_per_node):
    """3 ranks per node makes unequal nodes at 4, 5 and 8 ranks."""
    run_pytest_under_mpi(nprocs, "mpi_hierarchical_sparse.py", timeout=300,
                         env={"SCALEML_RANKS_PER_NODE": ranks_per_node})


@pytest.mark.parametrize("nprocs", [4])
def test_hierarchical_sparse_on_mpis_nodes(nprocs):
    """No emulation: MPI's one node here, steps 1 and 3 only."""
    run_pytest_under_mpi(nprocs, "mpi_hierarchical_sparse.py", timeout=300)


# PowerSGD (issue 22): the reducer's and the DDP hook's paths (the hook's tests skip without PyTorch)
@pytest.mark.parametrize("nprocs", [1, 2, 3, 4, 5])
def test_powersgd_is_identical_everywhere_and_resumes_bit_for_bit(nprocs):
    run_pytest_under_mpi(nprocs, "mpi_powersgd.py", timeout=600)
