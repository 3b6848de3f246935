"""One rank passes an argument of any unexpected type: every rank raises together, and the next call is right.

Every public collective, every argument, with values of the kinds that used to
raise before the argument agreement on the rank that had them (an unhashable
value where a name is expected, a non-finite or overflowing number, an object
whose every method raises): the other ranks then paired their call with that
rank's next call. A rank left waiting makes the whole job time out.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from mpi4py import MPI

import scaleml
from scaleml.compress import QSGD

# pytest-mpi: run under mpiexec with --with-mpi (tests/conftest.py: run_pytest_under_mpi), else skipped
pytestmark = pytest.mark.mpi

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
BAD_RANK = 1 % size
N = 5000


class Hostile:
    """Every conversion and comparison raises; not hashable."""

    __hash__ = None  # type: ignore[assignment]

    def __index__(self):
        raise RuntimeError("hostile __index__")

    def __int__(self):
        raise RuntimeError("hostile __int__")

    def __float__(self):
        raise RuntimeError("hostile __float__")

    def __eq__(self, other):
        raise RuntimeError("hostile __eq__")

    def __bool__(self):
        raise RuntimeError("hostile __bool__")


BAD_VALUES = {"unhashable": [1, 2], "inf": math.inf, "nan": math.nan, "hostile": Hostile(), "none": None,
              "str": "x", "object": object(), "huge": 2 ** 70}


def data():
    rng = np.random.default_rng(rank)
    x = rng.standard_normal(N).astype(np.float32)
    idx = np.sort(rng.choice(N, 300, replace=False)).astype(np.int64)
    return x, idx, rng.standard_normal(300).astype(np.float32)


def call(entry: str, arg: str, value, good: bool):
    """The entry point with its arguments, argument ``arg`` set to ``value`` unless ``good``."""
    x, idx, vals = data()
    if entry == "sparse_allreduce":
        kw = dict(indices=idx, values=vals, n=N, comm=world, algorithm="auto", out="dense")
    elif entry == "quantized_allreduce":
        kw = dict(x=x, comm=world, compression=QSGD(bits=4), algorithm="auto")
    elif entry == "topk_allreduce":
        kw = dict(grad=x, comm=world, ratio=0.05, k=None, algorithm="auto", name="g")
    else:
        kw = dict(sendbuf=x, recvbuf=np.empty_like(x), op=MPI.SUM)
    if not good:
        kw[arg] = value
    if entry == "sparse_allreduce":
        return scaleml.sparse_allreduce(kw.pop("indices"), kw.pop("values"), kw.pop("n"), **kw)
    if entry == "quantized_allreduce":
        return scaleml.quantized_allreduce(kw.pop("x"), **kw)
    if entry == "topk_allreduce":
        return scaleml.topk_allreduce(kw.pop("grad"), **kw)
    scaleml.Comm(world, min_count=0).Allreduce(kw["sendbuf"], kw["recvbuf"], kw["op"])
    return kw["recvbuf"]


ARGUMENTS = [("sparse_allreduce", a) for a in ("n", "algorithm", "out", "indices", "values")] + \
            [("quantized_allreduce", a) for a in ("x", "compression", "algorithm")] + \
            [("topk_allreduce", a) for a in ("grad", "ratio", "k", "algorithm", "name")] + \
            [("Allreduce", a) for a in ("recvbuf", "op")]
VALID = {("topk_allreduce", "k", "none"), ("topk_allreduce", "name", "str")}  # k=None: use ratio; any str names
CASES = [(e, a, k) for e, a in ARGUMENTS for k in sorted(BAD_VALUES) if (e, a, k) not in VALID]


@pytest.mark.parametrize("entry,arg,kind", CASES)
def test_one_rank_with_a_bad_argument_of_any_type(entry, arg, kind):
    value = BAD_VALUES[kind]
    if size == 1:
        with pytest.raises(Exception):  # noqa: B017 (any clear exception on the only rank)
            call(entry, arg, value, good=False)
    else:
        outcome = None
        try:
            call(entry, arg, value, good=rank != BAD_RANK)
        except Exception as exc:  # noqa: BLE001 (the kind is the entry point's business; raising is the point)
            outcome = type(exc).__name__
        outcomes = world.allgather(outcome)
        assert all(o is not None for o in outcomes), f"some ranks returned: {outcomes}"
    # the next call on the same communicator pairs with the same call on every rank and is exact
    x, _, _ = data()
    expected = np.empty_like(x)
    world.Allreduce(x, expected)
    got = np.empty_like(x)
    scaleml.Comm(world, min_count=0, algorithm="recursive_doubling").Allreduce(x, got)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def iallreduce_comms():
    """A communicator of its own per route for the Iallreduce cases (routes carry over from case to case)."""
    fresh = {"mpi": world.Dup(), "thread": world.Dup()}
    yield {route: scaleml.Comm(comm) for route, comm in fresh.items()}
    for comm in fresh.values():
        comm.Free()


@pytest.mark.parametrize("route", ["mpi", "thread"])
@pytest.mark.parametrize("arg,kind", [(a, k) for a in ("recvbuf", "op") for k in sorted(BAD_VALUES)])
def test_one_rank_with_a_bad_iallreduce_argument_of_any_type(route, arg, kind, iallreduce_comms, monkeypatch):
    """On both of Iallreduce's routes: MPI_Iallreduce (a size class MPI won) and the progress thread."""
    monkeypatch.setattr(scaleml.nonblocking, "IALLREDUCE_THREAD_BYTES", 1 << 40 if route == "mpi" else 0)
    comm = iallreduce_comms[route]
    x, _, _ = data()
    expected = np.empty_like(x)
    world.Allreduce(x, expected)
    for _ in range(100):  # good calls until the next call takes the route (decided alike on every rank)
        routes = comm._iallreduce_routes.get((x.size, x.dtype))
        if route == "thread" or (routes is not None and routes.mpi and routes.check is None
                                 and routes.calls < routes.until):
            break  # (from SCALEML_IALLREDUCE_THREAD_BYTES = 0 on, every call is a thread call)
        out = np.empty_like(x)
        comm.Iallreduce(x, out).Wait()
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    else:
        raise AssertionError(f"the {route} route never came")
    kw = dict(sendbuf=x, recvbuf=np.empty_like(x), op=MPI.SUM)
    if rank == BAD_RANK:
        kw[arg] = BAD_VALUES[kind]
    outcome = None
    try:
        comm.Iallreduce(kw["sendbuf"], kw["recvbuf"], kw["op"]).Wait()
    except Exception as exc:  # noqa: BLE001 (raising on every rank is the point)
        outcome = type(exc).__name__
    outcomes = world.allgather(outcome)
    if size > 1:
        assert all(o is not None for o in outcomes), f"some ranks returned: {outcomes}"
    else:
        assert outcomes[0] is not None
    out = np.empty_like(x)
    comm.Iallreduce(x, out).Wait()  # the next call pairs with the same call on every rank and is right
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
