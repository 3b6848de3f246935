"""The planner's memory: agreed measured times per size class, and the choice they lead to.

The alpha-beta model predicts; measurements decide. Each collective call of a
size class (entry point, value width, ``n.bit_length()``, format) is timed on
every rank, and the next agreement of that class carries the times (MAX over
ranks: the collective's time as its slowest rank sees it). Every rank
therefore updates identical statistics from identical agreed numbers, and its
choices, which depend only on agreed values, stay identical without extra
messages. Nothing here talks to MPI: :func:`ClassStats.choose` is pure, and
the unit tests replay recorded timings through it.

The rules of a choice (:meth:`ClassStats.choose`), per size class and density
(half decades of the agreed nnz / (P n)):

* **Capabilities first** (the caller's candidates: exact or lossy algorithms,
  the forms its memory allows), **then the model prunes**: an algorithm whose
  prediction is more than :data:`PRUNE_FACTOR` times the best candidate's is
  never run by ``auto``. Exact and lossy candidates are compared by their own
  estimates only: an exact algorithm's measured time never rules out a lossy
  format the caller asked for.
* **Estimates**: a measured algorithm is ``predicted x ratio``, the ratio the
  median of its last :data:`WINDOW` agreed ``measured / predicted`` samples. An
  algorithm not measured yet has its *prior*: the model's prediction at the
  bandwidth that the baseline's measured time implies (MPI's
  ``MPI_Allreduce``, measured first; :func:`bandwidth_factor`), corrected by
  how far its measured relatives (same family: exact or lossy, dense or
  sparse input) ran from their priors.
  The model's parameters describe a network it may not be on; the baseline
  measures the one it is on, so a network 8x slower than the parameters makes
  the untried algorithms' wire time 8x longer too, while their encoding and
  decoding stay what the model says they cost.
* **Exploration has a budget**: after the first choice, at most
  :data:`EXPLORE_LIMIT` calls per class and density run an algorithm that was
  never measured there (the best-estimated first), and only one whose
  estimate is below :data:`EXPLORE_WITHIN` times the best measured one's (and,
  for the drop-in, below the margin of MPI's time that it would have to beat to
  run: :data:`EXACT_WIN_MARGIN` or :data:`WIN_MARGIN`): the model cannot
  rank algorithms it puts close together, and trying one costs one call. The
  same budget pays a **second look**: an explored algorithm whose one (cold)
  sample is within 1.5x of the incumbent's warm estimate runs once more
  before it is judged. So the extra time the first calls of a class spend
  exploring is at most ``EXPLORE_LIMIT`` calls, each estimated at most 1.5x
  the best measured call.
* **Cold calls**: the first call of an algorithm in a class pays one-time
  costs (MPI's connections, first-touch memory). Its sample is replaced by
  the second one, and the incumbent runs a second time before anything is
  compared with it or explored (an algorithm first-touching megabytes of
  buffers once lost its place to one 1.5x slower warm on that one call), and
  the baseline runs :data:`BASELINE_RUNS` times before anything is compared
  with it (its second call spends one call of the
  exploration budget); one cold sample of MPI once made ``auto`` keep an
  algorithm that measured 4x slower than MPI.
* **Hysteresis**: the algorithm in use (the incumbent) is replaced by another
  measured one only when the other's estimate is below ``SWITCH_MARGIN`` of
  the incumbent's; estimates are medians of several agreed samples, so one
  slow or fast call does not flip a choice.

For the drop-in (:class:`scaleml.Comm`) MPI's own ``MPI_Allreduce`` on the
caller's buffers is the baseline: it is measured first (one call), and an
engine algorithm runs only where its estimate is below a margin of MPI's
measured time (its best recent time: the comparison leans towards MPI): an
exact algorithm below :data:`EXACT_WIN_MARGIN` of it, since it gives up nothing
but time; a lossy one below :data:`WIN_MARGIN`, since its error is worth paying
only for a clear gain. Otherwise the class goes to MPI directly, with no
agreement at all, for the next ``backoff`` calls (4, then x4 up to 1024), so
small and mid-size messages cost what MPI costs; the call that ends the period
re-checks with fresh numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

WIN_MARGIN = 0.9
"""A lossy engine algorithm replaces MPI (exact) only when its estimate is below this fraction of MPI's time."""
EXACT_WIN_MARGIN = 0.95
"""An exact engine algorithm replaces MPI only when its estimate is below this fraction of MPI's time. MPI's time
is its best recent one and the estimate a median, so the comparison already leans towards MPI; an exact
algorithm measured 8% faster (the hierarchical one on 2 nodes of 2 ranks, whose ceiling over MPI is about
1.25x) is worth its place, where a lossy one must also pay for its error."""
SWITCH_MARGIN = 0.9
"""Another algorithm replaces the one in use (or is explored) only below this fraction of its estimate."""
PRUNE_FACTOR = 4.0
"""An algorithm predicted more than this many times the best candidate's prediction is never explored."""
EXPLORE_LIMIT = 3
"""Calls per class and density that may try an algorithm never measured there, or run once more one whose
only sample is its cold first call, after the first choice."""
EXPLORE_WITHIN = 1.5
"""An algorithm never measured is tried only when its estimate is below this many times the best measured one's:
the model cannot rank near-equals, and one call of an algorithm estimated within 1.5x costs little."""
INITIAL_BACKOFF = 4
MAX_BACKOFF = 1024
WINDOW = 5
"""Agreed samples kept per estimate; the estimate is their median."""
BASELINE_RUNS = 2
"""Calls of the baseline (MPI) measured in a class before anything is compared with it: the first call of
an algorithm in a class pays one-time costs (connections, first-touch memory), which would make the baseline
look slower than it is and an engine algorithm win on that one sample."""


def density_bucket(nnz_sum: int, ranks: int, n: int) -> int:
    """Half decades of the mean density nnz_sum / (ranks n) (an agreed value, so the same on every rank)."""
    if n <= 0 or ranks <= 0 or nnz_sum <= 0:
        return -100
    return math.floor(2 * math.log10(min(nnz_sum / (ranks * n), 1.0)))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


def _push(samples: list[float], value: float) -> float:
    """Append value, keep the last WINDOW samples, return their median."""
    samples.append(value)
    del samples[:-WINDOW]
    return _median(samples)


@dataclass
class ClassStats:
    """What the ranks have agreed about one size class (identical on every rank)."""

    calls: int = 0
    dtype: object = None
    """The value dtype of the class (the drop-in's fast path compares it by identity)."""
    mpi_until: int = 0
    """Calls up to this count go to MPI without an agreement (the drop-in's MPI periods)."""
    backoff: int = INITIAL_BACKOFF
    ratio: dict[tuple[str, int], float] = field(default_factory=dict)
    """Measured / predicted time per (algorithm, density bucket) (agreed)."""
    bucket: int = 0
    """Density bucket of the current call (:func:`density_bucket` of the agreed nnz)."""
    mpi_seconds: float | None = None
    """Agreed time of plain MPI_Allreduce in this class (the drop-in's baseline)."""
    last_engine: tuple[str, int, float] | None = None
    """(algorithm, density bucket, predicted seconds) of the last engine call, reported at the next agreement."""
    incumbent: dict[int, str] = field(default_factory=dict)
    """Density bucket -> the algorithm in use there (the hysteresis of :meth:`choose`)."""
    explored: dict[int, int] = field(default_factory=dict)
    """Density bucket -> calls spent trying algorithms never measured there (at most EXPLORE_LIMIT)."""
    chosen_estimate: float = 0.0
    """The estimate :meth:`choose` gave its last choice (seconds)."""
    exploring: bool = False
    """Whether :meth:`choose`'s last choice was an exploration (an algorithm never measured here, or a second
    look: one whose only sample is its cold first call)."""
    second_look: bool = False
    """Whether that exploration was a second look."""
    _ratio_samples: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    _runs: dict[tuple[str, int], int] = field(default_factory=dict)
    """Measured calls per (algorithm, density bucket), the cold one included."""
    _mpi_samples: list[float] = field(default_factory=list)
    mpi_runs: int = 0
    """Measured calls of the drop-in's MPI baseline (agreed reports)."""
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
            seconds = engine_ns * 1e-9
            if predicted > 0:
                key = (algorithm, bucket)
                samples = self._ratio_samples.setdefault(key, [])
                runs = self._runs[key] = self._runs.get(key, 0) + 1
                if runs == 2:
                    samples.clear()  # the cold first call's sample gives way to the first warm one
                self.ratio[key] = _push(samples, seconds / predicted)
        self.last_engine = None
        if mpi_ns > 0:
            # MPI's best recent time, not its median: the comparison leans towards MPI, the safe side.
            self.mpi_runs += 1
            if self.mpi_runs == 2:
                self._mpi_samples.clear()  # the cold first call, as above
            _push(self._mpi_samples, mpi_ns * 1e-9)
            self.mpi_seconds = min(self._mpi_samples)

    def at_density(self, nnz_sum: int, ranks: int, n: int) -> None:
        """Set the density bucket of this call from agreed values."""
        self.bucket = density_bucket(nnz_sum, ranks, n)

    def measured(self, algorithm: str) -> bool:
        """Whether ``algorithm`` has an agreed time at the current density."""
        return (algorithm, self.bucket) in self.ratio

    def baseline_call(self, runs: int | None = None) -> None:
        """A call of the baseline while it is measured first; ``runs``: its measured calls so far (default the
        drop-in's MPI calls). Every call after the first spends one of the :data:`EXPLORE_LIMIT` calls of the
        density bucket: the extra calls of a class's first ones stay within the budget."""
        if (self.mpi_runs if runs is None else runs) >= 1:
            self.explored[self.bucket] = self.explored.get(self.bucket, 0) + 1

    def runs(self, algorithm: str) -> int:
        """Measured calls of ``algorithm`` at the current density (agreed), the cold first one included."""
        return self._runs.get((algorithm, self.bucket), 0)

    def samples(self, algorithm: str) -> int:
        """Agreed samples of ``algorithm`` at the current density (at most WINDOW)."""
        return len(self._ratio_samples.get((algorithm, self.bucket), ()))

    def baseline_seconds(self, predicted: dict[str, float], baseline: str = "dense") -> float | None:
        """The measured time of the baseline: MPI's own Allreduce (the drop-in's), else the ``baseline``
        algorithm's estimate once measured at this density; None before."""
        if self.mpi_seconds is not None:
            return self.mpi_seconds
        if baseline in predicted and self.measured(baseline):
            return self.estimate(baseline, predicted[baseline])
        return None

    def estimate(self, algorithm: str, predicted: float, prior: float | None = None) -> float:
        """Estimated seconds: measured ratio x prediction, or (never measured here) ``prior`` (default the
        prediction)."""
        ratio = self.ratio.get((algorithm, self.bucket))
        if ratio is not None:
            return predicted * ratio
        return predicted if prior is None else prior

    def choose(self, predicted: dict[str, float], candidates: Iterable[str],
               prior: dict[str, float] | None = None, families: dict[str, object] | None = None,
               ceiling: Mapping[str, float] | None = None) -> str:
        """The algorithm to run among ``candidates`` (see the module's rules); the same on every rank.

        Parameters
        ----------
        predicted : dict
            The model's seconds per algorithm (agreed inputs, so the same everywhere).
        candidates : iterable of str
            The algorithms the call's capabilities allow, in registry order (ties go to the first).
        prior : dict, optional
            Estimates of the algorithms not measured yet (the model at the measured bandwidth); default the
            predictions.
        families : dict, optional
            Algorithm -> its family (algorithms that share a structure, whose model errs alike): an untried
            algorithm's prior is scaled by how far its measured relatives ran from theirs.
        ceiling : dict, optional
            Algorithm -> never explore it estimated at or above this (the drop-in: the margin of MPI's time
            that it must beat to run); an algorithm not in it has no ceiling.
        """
        names = [a for a in candidates if a in predicted]
        if not names:
            raise ValueError("no candidate algorithm")
        best_predicted = min(predicted[a] for a in names)
        viable = [a for a in names if predicted[a] <= PRUNE_FACTOR * best_predicted]
        prior = {a: prior.get(a, predicted[a]) if prior else predicted[a] for a in names}
        measured = [a for a in names if self.measured(a)]
        est = {a: self.estimate(a, predicted[a]) for a in measured}
        families = families or {}
        for a in viable:
            if a not in est:
                relatives = [est[m] / prior[m] for m in measured if families.get(m, m) == families.get(a, a)
                             and prior[m] > 0]
                est[a] = prior[a] * (_median(relatives) if relatives else 1.0)
        measured = [a for a in viable if a in measured]
        untried = [a for a in viable if a not in measured]
        self.exploring = self.second_look = False
        caps = {a: (ceiling or {}).get(a, math.inf) for a in names}
        choice = self._choice(est, viable, measured, untried, caps)
        self.chosen_estimate = est[choice]
        return choice

    def _choice(self, est: dict[str, float], viable: list[str], measured: list[str], untried: list[str],
                ceiling: dict[str, float]) -> str:
        bucket = self.bucket
        if not measured:  # the model's first choice: not exploration
            choice = min(viable, key=est.__getitem__)
            self.incumbent[bucket] = choice
            return choice
        incumbent = self.incumbent.get(bucket)
        if incumbent in measured and self.runs(incumbent) == 1:
            return incumbent  # its one sample is its cold first call: no evidence against it until a warm one
        best_measured = min(measured, key=est.__getitem__)
        budget_left = self.explored.get(bucket, 0) < EXPLORE_LIMIT
        if budget_left and incumbent in measured:
            # A second look: an explored algorithm's one sample is its cold first call, which the incumbent's
            # is not (it ran twice); within reach of the incumbent, it runs once warm before it is judged.
            second = [a for a in measured if a != incumbent and self.runs(a) == 1
                      and est[a] < min(EXPLORE_WITHIN * est[incumbent], ceiling[a])]
            if second:
                self.explored[bucket] = self.explored.get(bucket, 0) + 1
                self.exploring = self.second_look = True
                return min(second, key=est.__getitem__)
        if untried and budget_left:
            candidate = min(untried, key=est.__getitem__)
            if est[candidate] < min(EXPLORE_WITHIN * est[best_measured], ceiling[candidate]):
                self.explored[bucket] = self.explored.get(bucket, 0) + 1
                self.exploring = True
                return candidate  # one call to measure it; the incumbent stays until it is beaten
        if incumbent in measured and est[best_measured] >= SWITCH_MARGIN * est[incumbent]:
            return incumbent
        self.incumbent[bucket] = best_measured
        return best_measured

    def record_engine(self, algorithm: str, predicted: float, seconds: float) -> None:
        self.last_engine = (algorithm, self.bucket, predicted)
        self._engine_local = seconds

    def record_mpi(self, seconds: float) -> None:
        self._mpi_local.append(seconds)

    def go_mpi(self) -> None:
        """MPI won: skip agreements for the next ``backoff`` calls."""
        self.mpi_until = self.calls + self.backoff
        self.backoff = min(self.backoff * 4, MAX_BACKOFF)

    def stay_engine(self) -> None:
        self.backoff = INITIAL_BACKOFF


def bandwidth_factor(predicted: float, local: float, measured: float | None) -> float | None:
    """How much longer than the model's ``beta`` a byte takes on the wire, from the baseline's measured time.

    Parameters
    ----------
    predicted : float
        The model's seconds of the baseline (MPI's Allreduce: linear in ``beta``).
    local : float
        The same without the wire (``beta = 0``).
    measured : float or None
        The baseline's agreed measured time (None: not measured yet).

    Returns
    -------
    float or None
        ``(measured - local) / (predicted - local)`` (at least 0); None when there is nothing to scale.
    """
    wire = predicted - local
    if measured is None or wire <= 0:
        return None
    return max(measured - local, 0.0) / wire


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
