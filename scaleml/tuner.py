"""Online correction of the cost model: every rank learns the same measured times and keeps choosing alike.

The alpha-beta model predicts; measurements decide. Each collective call of a
size class (value width, ``n.bit_length()``, entry point) is timed on every
rank, and the next agreement of that class carries the times (MAX over ranks:
the collective's time as its slowest rank sees it). Every rank therefore
updates identical statistics from identical agreed numbers, and its choices,
which depend only on agreed values, stay identical without extra messages.

* For each algorithm and density (half decades of the agreed nnz / (P n)) the
  tuner keeps ``ratio = measured / predicted`` (the median of the last
  :data:`WINDOW` agreed samples: times on ranks that share cores have heavy
  tails, and one slow call must not flip a choice; MPI's time is the minimum
  of its last samples, so a comparison leans towards MPI) and
  ranks candidates by ``predicted * ratio``; an algorithm never measured at a
  class and density keeps ratio 1 (the model alone). Densities are kept apart
  because where the model errs depends on them (merging costs grow with the
  union, which the model estimates).
* Plain ``MPI_Allreduce`` is measured first in every class (the ``dense``
  algorithm for :func:`scaleml.sparse_allreduce`, at every density): it is the
  baseline never to lose to, and the model, with its parameters for a network,
  can be far off on shared memory. An engine algorithm is tried only where the
  model, corrected by what has been measured, predicts it faster; its measured
  time then corrects the model for the next calls.
* For the drop-in it also keeps the time of plain ``MPI_Allreduce`` in the
  class. When the best engine estimate is not clearly faster (below
  :data:`WIN_MARGIN` of MPI's time), the class goes to MPI directly, with no
  agreement at all, for the next ``backoff`` calls (4, then x4 up to 1024), so
  small and mid-size messages cost what MPI costs; the call that ends the
  period re-checks with fresh numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

WIN_MARGIN = 0.9
"""An engine algorithm replaces MPI only when its estimate is below this fraction of MPI's time."""
INITIAL_BACKOFF = 4
MAX_BACKOFF = 1024
WINDOW = 5
"""Agreed samples kept per estimate; the estimate is their median."""


def density_bucket(nnz_sum: int, ranks: int, n: int) -> int:
    """Half decades of the mean density nnz_sum / (ranks n) (an agreed value, so the same on every rank)."""
    if n <= 0 or ranks <= 0 or nnz_sum <= 0:
        return -100
    return math.floor(2 * math.log10(min(nnz_sum / (ranks * n), 1.0)))


def _push(samples: list[float], value: float) -> float:
    """Append value, keep the last WINDOW samples, return their median."""
    samples.append(value)
    del samples[:-WINDOW]
    ordered = sorted(samples)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


@dataclass
class ClassStats:
    """What the ranks have agreed about one size class (identical on every rank)."""

    calls: int = 0
    mpi_until: int = 0
    """Calls up to this count go to MPI without an agreement."""
    backoff: int = INITIAL_BACKOFF
    ratio: dict[tuple[str, int], float] = field(default_factory=dict)
    """Measured / predicted time per (algorithm, density bucket) (agreed)."""
    bucket: int = 0
    """Density bucket of the current call (:func:`density_bucket` of the agreed nnz)."""
    mpi_seconds: float | None = None
    """Agreed time of plain MPI_Allreduce in this class."""
    engine_floor: float | None = None
    """The least agreed time of any engine call in this class: the agreement and the Python around it
    cost at least this much, so when it is not below MPI's time no untried algorithm is worth a try."""
    last_engine: tuple[str, int, float] | None = None
    """(algorithm, density bucket, predicted seconds) of the last engine call, reported at the next agreement."""
    _ratio_samples: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    _mpi_samples: list[float] = field(default_factory=list)
    # this rank's own measurements, reported at the next agreement of the class
    _engine_local: float = 0.0
    _mpi_local: list[float] = field(default_factory=list)

    def reports_ns(self) -> tuple[int, int]:
        """(last engine call, median MPI call) of this rank in nanoseconds, 0 for none; then cleared."""
        mpi = sorted(self._mpi_local)[len(self._mpi_local) // 2] if self._mpi_local else 0.0
        engine = self._engine_local
        self._engine_local = 0.0
        self._mpi_local.clear()
        return round(engine * 1e9), round(mpi * 1e9)

    def learn(self, engine_ns: int, mpi_ns: int) -> None:
        """Update from the agreed (MAX over ranks) reports."""
        if engine_ns > 0 and self.last_engine is not None:
            algorithm, bucket, predicted = self.last_engine
            if predicted > 0:
                key = (algorithm, bucket)
                self.ratio[key] = _push(self._ratio_samples.setdefault(key, []), engine_ns * 1e-9 / predicted)
            seconds = engine_ns * 1e-9
            self.engine_floor = seconds if self.engine_floor is None else min(self.engine_floor, seconds)
        self.last_engine = None
        if mpi_ns > 0:
            # MPI's best recent time, not its median: the comparison leans towards MPI, the safe side.
            _push(self._mpi_samples, mpi_ns * 1e-9)
            self.mpi_seconds = min(self._mpi_samples)

    def at_density(self, nnz_sum: int, ranks: int, n: int) -> None:
        """Set the density bucket of this call from agreed values."""
        self.bucket = density_bucket(nnz_sum, ranks, n)

    def measured(self, algorithm: str) -> bool:
        """Whether ``algorithm`` has an agreed time at the current density."""
        return (algorithm, self.bucket) in self.ratio

    def estimate(self, algorithm: str, predicted: float) -> float:
        return predicted * self.ratio.get((algorithm, self.bucket), 1.0)

    def record_engine(self, algorithm: str, predicted: float, seconds: float) -> None:
        self.last_engine = (algorithm, self.bucket, predicted)
        self._engine_local = seconds

    def record_mpi(self, seconds: float) -> None:
        self._mpi_local.append(seconds)

    def engine_may_win(self) -> bool:
        """Whether an engine call can beat MPI here at all (see :attr:`engine_floor`)."""
        return self.mpi_seconds is not None and (
            self.engine_floor is None or self.engine_floor < WIN_MARGIN * self.mpi_seconds)

    def go_mpi(self) -> None:
        """MPI won: skip agreements for the next ``backoff`` calls."""
        self.mpi_until = self.calls + self.backoff
        self.backoff = min(self.backoff * 4, MAX_BACKOFF)

    def stay_engine(self) -> None:
        self.backoff = INITIAL_BACKOFF


class Tuner:
    """Statistics per size class of one communicator."""

    def __init__(self) -> None:
        self.classes: dict[tuple, ClassStats] = {}

    def stats(self, entry: str, value_bytes: int, n: int, *extra: object) -> ClassStats:
        key = (entry, value_bytes, int(n).bit_length(), *extra)
        found = self.classes.get(key)
        if found is None:
            found = self.classes[key] = ClassStats()
        return found
