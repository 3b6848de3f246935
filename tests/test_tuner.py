"""scaleml.tuner: measured times correct the model, and MPI periods back off (pure logic, no MPI)."""

from __future__ import annotations

import pytest

from scaleml.tuner import INITIAL_BACKOFF, MAX_BACKOFF, ClassStats, Tuner, density_bucket


def test_ratio_is_learned_from_agreed_reports():
    s = ClassStats()
    assert s.estimate("recursive_doubling", 2e-3) == 2e-3  # never measured: the model alone
    s.record_engine("recursive_doubling", predicted=1e-3, seconds=4e-3)
    engine_ns, mpi_ns = s.reports_ns()
    assert (engine_ns, mpi_ns) == (4_000_000, 0)
    assert s.reports_ns() == (0, 0)  # reported once
    s.learn(engine_ns, mpi_ns)
    assert s.ratio["recursive_doubling", s.bucket] == pytest.approx(4.0)
    assert s.estimate("recursive_doubling", 2e-3) == pytest.approx(8e-3)
    s.record_engine("recursive_doubling", predicted=1e-3, seconds=2e-3)
    s.learn(*s.reports_ns())
    assert s.ratio["recursive_doubling", s.bucket] == pytest.approx(2.0)  # the cold first call gives way
    s.record_engine("recursive_doubling", predicted=1e-3, seconds=4e-3)
    s.learn(*s.reports_ns())
    assert s.ratio["recursive_doubling", s.bucket] == pytest.approx(3.0)  # the median of the warm samples
    for seconds in (2e-3, 50e-3, 2e-3, 2e-3, 2e-3):  # one slow call among them does not move it
        s.record_engine("recursive_doubling", predicted=1e-3, seconds=seconds)
        s.learn(*s.reports_ns())
    assert s.ratio["recursive_doubling", s.bucket] == pytest.approx(2.0)


def test_reports_without_a_pending_engine_call_teach_nothing():
    s = ClassStats()
    s.learn(5_000_000, 0)
    assert s.ratio == {} and s.mpi_seconds is None


def test_mpi_time_is_the_median_of_the_calls_since_the_last_agreement():
    s = ClassStats()
    for t in (1e-4, 2e-4, 9e-3):
        s.record_mpi(t)
    engine_ns, mpi_ns = s.reports_ns()
    assert engine_ns == 0 and mpi_ns == 200_000
    s.learn(engine_ns, mpi_ns)
    assert s.mpi_seconds == pytest.approx(2e-4) and s.mpi_runs == 1
    s.record_mpi(3e-4)
    s.learn(*s.reports_ns())
    assert s.mpi_seconds == pytest.approx(3e-4)  # the cold first report gives way to the second
    s.record_mpi(5e-4)
    s.learn(*s.reports_ns())
    assert s.mpi_seconds == pytest.approx(3e-4)  # MPI's best recent time: comparisons lean towards MPI


def test_backoff_grows_to_its_cap_and_resets():
    s = ClassStats()
    periods = []
    for _ in range(10):
        s.calls += 1
        s.go_mpi()
        periods.append(s.mpi_until - s.calls)
        s.calls = s.mpi_until
    assert periods[0] == INITIAL_BACKOFF and periods[-1] == MAX_BACKOFF
    assert all(b >= a for a, b in zip(periods, periods[1:]))
    s.stay_engine()
    assert s.backoff == INITIAL_BACKOFF


def test_classes_are_per_entry_width_and_size():
    t = Tuner()
    a = t.stats("Allreduce", 4, 5000)
    assert t.stats("Allreduce", 4, 8000) is a  # same power of two
    assert t.stats("Allreduce", 4, 9000) is not a
    assert t.stats("Allreduce", 8, 5000) is not a
    assert t.stats("sparse_allreduce", 4, 5000, "dense") is not a


def test_ratios_are_kept_per_density():
    s = ClassStats()
    s.at_density(40, 4, 1000)  # density 1e-2
    s.record_engine("split_allgather", predicted=1e-3, seconds=5e-3)
    s.learn(*s.reports_ns())
    assert s.estimate("split_allgather", 1e-3) == pytest.approx(5e-3)
    s.at_density(4, 4, 10_000)  # density 1e-4: nothing measured there yet
    assert s.estimate("split_allgather", 1e-3) == pytest.approx(1e-3)
    s.at_density(41, 4, 1000)  # the same half decade as the first
    assert s.estimate("split_allgather", 1e-3) == pytest.approx(5e-3)


def test_density_buckets():
    assert density_bucket(0, 4, 100) == density_bucket(5, 4, 0) == -100
    assert density_bucket(400, 4, 100) == 0  # dense
    assert density_bucket(4, 4, 100) == -4  # 1e-2
    assert density_bucket(4, 4, 1000) == density_bucket(12, 4, 1000) == -6  # 1e-3 .. 3.16e-3


