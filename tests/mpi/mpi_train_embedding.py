"""The embedding-bag workload under mpiexec: ``sparse`` is exact (``none``'s parameters up to the rounding of the
sums) and sends about the gradient density's share of the dense bytes."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from scaleml.train import TrainConfig, train

pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()

# 12 steps per rank: batch 32, 384 samples per rank. The embedding (20000 x 16) alone is the compressed
# bucket; W1 (16 x 32), W2 (32 x 4), both < min_compress_size, and the biases are averaged exactly.
BASE = dict(dataset="zipf-text", model="embedding-bag", vocab=20000, embed_dim=16, hidden=[32], bag_mode="sum",
            synthetic_samples=384 * size, synthetic_classes=4, optimizer="sgd", lr=0.3, batch_size=32, epochs=1,
            seed=3, quiet=True, check_every=1)


def identical_everywhere(arrays: list[np.ndarray]) -> bool:
    mine = b"".join(a.tobytes() for a in arrays)
    return all(x == mine for x in comm.allgather(mine))


def test_sparse_is_the_exact_run_and_sends_the_touched_rows():
    dense = train(TrainConfig(compression="none", **BASE), comm)
    sparse = train(TrainConfig(compression="sparse", **BASE), comm)
    assert identical_everywhere(sparse.params)
    init = dense.model.init(BASE["seed"])
    E0, Ed, Es = init[0], dense.params[0], sparse.params[0]
    # rows no rank touched are the initial rows, bitwise, in both runs; the touched ones moved alike
    untouched = np.all(Ed == E0, axis=1)
    assert np.array_equal(untouched, np.all(Es == E0, axis=1))
    assert 0 < (~untouched).sum() < 0.5 * E0.shape[0]  # 12 steps touch about 5500 rows at 4 ranks
    for a, b in zip(dense.params, sparse.params):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)  # float32 sums in another order
    hd, hs = dense.history[-1], sparse.history[-1]
    assert hs["test_accuracy"] == pytest.approx(hd["test_accuracy"], abs=2 / 400)
    # what sparse sent: the compressed bucket's non-zeros as (4-byte index, 4-byte value) pairs, by split_allgather.
    # Its first phase sends the (P-1)/P of this rank's pairs that other ranks own: the density times the bytes of a
    # ring AllReduce of the bucket. Its second sends this rank's share of the union of every rank's rows to the P-1
    # others: between that again (every rank touched the same rows) and P times it (no row in common).
    st = sparse.reducer.stats
    bucket = next(b for b in sparse.reducer.buckets if b.compressed)
    assert bucket.members == (0,)
    density = st.density
    assert hs["grad_density"] == pytest.approx(np.mean(comm.allgather(density)), rel=1e-9)  # equal elements
    assert 0 < density < 0.05
    ring = st.calls * 2 * (size - 1) * bucket.nbytes / size
    sent = st.per_path["sparse"]
    assert 0.8 * density * ring < sent < 1.05 * (size + 1) * density * ring, (sent, density, ring)
    assert sent + st.per_path["exact"] < 0.1 * dense.reducer.stats.bytes_sent
    assert dense.history[-1]["grad_density"] is None
