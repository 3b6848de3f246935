"""scaleml.train on digits: every compressor against the exact run, same epochs, within 1 point of accuracy."""

from __future__ import annotations

import pytest
from mpi4py import MPI

from scaleml.train import TrainConfig, train

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


# The comparison on digits (issue 9). The margin was fixed by the issue before any run: every compressor must end
# the same number of epochs at most 1 point of test accuracy below the exact run (doing better is fine).
#
# One configuration for every compressor, chosen on principle and from the exact run alone:
# * Plain SGD, no momentum. 1-bit SGD with error feedback (Seide et al. 2014) and the analyses of top-k and
#   QSGD with error feedback are for plain SGD. Heavy-ball momentum applied after a compressed average multiplies
#   the compression error (released late by error feedback) by up to 1/(1 - 0.9) = 10: with momentum 0.9 at
#   lr 0.1, 1-bit diverged (37% at P=2, 45% at P=4). Its standard fix (momentum correction: accumulate the
#   velocity on each rank before compressing) would give the compressed runs another optimizer than the exact one.
# * lr 0.2: in a sweep of the exact run (lr 0.05, 0.1, 0.2, 0.5; 60 epochs, 4 ranks) 0.05 and 0.1 were still
#   climbing at epoch 60 (10-epoch mean accuracy 92.2% -> 93.5% and 95.2% -> 95.6% from epochs 41-50 to 51-60),
#   and 0.5 fell by up to 5.3 points from one epoch to the next after epoch 20 (more than the margin); 0.2 levels
#   off at 96-97% (96.5% over epochs 41-50 and 51-60) and moves by at most 1.7 points between epochs.
# * 60 epochs: past the exact run's plateau. Run to 120 epochs, its 10-epoch mean accuracy stays within the margin
#   (1 point) of its mean over epochs 101-120 (97.4% at P=2, 97.0% at P=4) from epoch 30 (P=2) and 41 (P=4) on; at
#   epoch 60 the 10-epoch mean is 96.9% and 96.5%: the 60 epochs after add about half a point.
# Both weight matrices (64x32, 32x10, fused into one bucket) are compressed (min_compress_size=256); the biases
# are averaged exactly. Fixed seeds and algorithms: the numbers are reproducible on a machine. Measured at
# epoch 60 (exact 96.94% at P=2, 96.39% at P=4), every compressor is within 0.3 points of the exact run or better.
DIGITS = dict(dataset="digits", model="mlp", hidden=[32], optimizer="sgd", lr=0.2, batch_size=32, epochs=60,
              seed=0, min_compress_size=256, quiet=True)

DENSE = ["dropin", "sparse", "qsgd4", "qsgd4_ef", "qsgd8", "fp16"]
SPARSIFIERS = ["topk0.01", "onebit", "adaptive"]
_exact: dict[str, float] = {}


def exact_run() -> dict[str, float]:
    if not _exact:
        final = train(TrainConfig(compression="none", **DIGITS), comm).history[-1]
        _exact.update(acc=final["test_accuracy"], bytes=final["bytes_total_per_rank"])
        assert _exact["acc"] > 0.95, "the exact run must converge for the comparison to mean anything"
    return _exact


@pytest.mark.parametrize("compression", DENSE + SPARSIFIERS)
def test_compressor_reaches_the_exact_accuracy_within_one_point(compression):
    exact = exact_run()
    final = train(TrainConfig(compression=compression, **DIGITS), comm).history[-1]
    acc = final["test_accuracy"]
    if rank == 0:
        print(f"\n[digits P={size}] {compression}: test accuracy {acc:.4f} vs exact {exact['acc']:.4f} "
              f"({100 * (acc - exact['acc']):+.2f} points), {final['bytes_total_per_rank'] / 1e6:.3f} MB/rank "
              f"vs {exact['bytes'] / 1e6:.3f}")
    if size > 1 and compression not in ("dropin", "sparse"):
        assert final["bytes_total_per_rank"] < exact["bytes"]
    assert acc >= exact["acc"] - 0.01, f"{compression}: {acc:.4f} vs exact {exact['acc']:.4f}"
