"""A replay of the drop-in's planning loop on recorded timings (no MPI): what the planner chooses call by call."""

from __future__ import annotations

import numpy as np

from scaleml import cost_model, engine
from scaleml.tuner import ClassStats
from scaleml.value_format import value_format


def replay(true_seconds: dict[str, float], mpi_seconds: float, *, compression: object = None, n: int = 1 << 22,
           P: int = 4, density: float = 1.0, calls: int = 13, ranks: int = 1, noise: float = 0.0,
           seed: int = 0, cold: dict[str, float] | None = None, dropin: bool = True,
           nodes: tuple[int, int, int] | None = None) -> list[list[str]]:
    """Routes per call (``mpi`` or an algorithm), one list per simulated rank.

    Each rank keeps its own :class:`ClassStats` and measures its own noisy time (``true x (1 + noise u)``,
    u uniform in [-1, 1]); the reports are agreed as the real agreement does (MAX over ranks). ``cold`` maps
    a route to the factor its first call costs more (MPI's connections). ``dropin=False`` replays a library
    collective, whose baseline is the registry's ``dense`` (MPI inside the engine). ``nodes`` is the
    topology's shape for the hierarchical algorithms.
    """
    rng = np.random.default_rng(seed)
    fmt = value_format(compression) if compression is not None else None
    x = np.zeros(n, np.float32)
    nnz = int(density * n)
    stats = [ClassStats() for _ in range(ranks)]
    routes: list[list[str]] = [[] for _ in range(ranks)]
    agreement = engine.Agreement(nnz_max=nnz, nnz_sum=nnz * P, dense_fits=True)
    topology = engine.Topology(None, 0, 0, nodes[0], 0, nodes[1], nodes[1], nodes[2]) if nodes else None
    model = (n, P, agreement, 4, 4, False, True, fmt)
    predicted = engine.predict(*model, topology=topology)
    ran: set[str] = set()

    def true_time(route: str) -> float:
        seconds = mpi_seconds if route == "mpi" else true_seconds[route]
        if route not in ran:
            ran.add(route)
            seconds *= (cold or {}).get(route, 1.0)
        return seconds

    assert cost_model.get_params() == cost_model.CostParams(), "replays use the built-in parameters"

    def measured(seconds: float) -> list[float]:
        return [seconds * (1 + noise * rng.uniform(-1, 1)) for _ in range(ranks)]

    for _ in range(calls):
        if stats[0].calls < stats[0].mpi_until:  # an MPI period: no agreement
            for r, t in zip(range(ranks), measured(true_time("mpi"))):
                stats[r].calls += 1
                stats[r].record_mpi(t)
                routes[r].append("mpi")
            continue
        reports = [s.reports_ns() for s in stats]
        agreed = (max(e for e, _ in reports), max(m for _, m in reports))
        chosen = []
        for s in stats:
            s.calls += 1
            s.learn(*agreed)
            s.at_density(agreement.nnz_sum, P, n)
            call = engine.Call(n, x, fmt=fmt, nnz=nnz, mpi_allreduce=(lambda: None) if dropin else None)
            chosen.append(engine.plan(call, 0, agreement, s, predicted,
                                      lambda factor: engine.predict(*model, beta_factor=factor,
                                                                    topology=topology))[0])
        seconds = measured(true_time("mpi" if chosen[0] == "dense" else chosen[0]))
        for r, s in enumerate(stats):
            if chosen[r] == "dense" and dropin:
                s.record_mpi(seconds[r])
            else:
                s.record_engine(chosen[r], predicted[chosen[r]], seconds[r])
            routes[r].append("mpi" if chosen[r] == "dense" else chosen[r])
    return routes
