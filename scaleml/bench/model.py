"""``scaleml-bench model``: the cost model's predicted time of every algorithm, and the choice of ``auto``.

Three tables: the exact algorithms of the sparse AllReduce per (ranks, count, density, bits), and the lossy
formats per (ranks, count, format): the dense quantized algorithms of the registry next to the exact dense
AllReduce and an allgather of the compressed vectors, each with its bytes sent per rank, to show which of
them grow with the number of ranks; and the exact dense AllReduce on nodes of ``--ranks-per-node`` ranks (default
8), the flat algorithms next to ``hierarchical_dense``, then the lossy formats on those nodes, the flat quantized
algorithms next to ``hierarchical_quantized``, and the sparse data of ``--density`` on those nodes, the flat
exact algorithms next to ``hierarchical_dense`` and ``hierarchical_sparse``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict

import numpy as np

from .. import algorithms, cost_model
from ..compress.framing import HEADER_BYTES
from ..sparse import index_dtype
from ..value_format import value_format
from .methods import make_format

EXACT = tuple(a.name for a in algorithms.REGISTRY.values() if a.exact)
LOSSY = algorithms.LOSSY  # the formats of compression= (adaptive_allreduce's algorithm takes its own)
ALLGATHER = "allgather"
"""The allgather of compressed vectors (``allgather:FORMAT`` in the sweep), modelled here, not in the registry."""


def allgather_cost(n: int, P: int, message_bytes: float, value_bytes: int,
                   params: cost_model.CostParams) -> tuple[float, float]:
    """Predicted seconds and bytes sent per rank of allgathering P compressed vectors, then decoding and summing.

    A ring allgather: P-1 steps, each sending one rank's message of ``message_bytes`` and receiving
    another's; then every rank decodes and adds the P vectors (local work on P n values).

    Parameters
    ----------
    n : int
        Length of the vectors.
    P : int
        Number of ranks.
    message_bytes : float
        Size of one compressed vector (header included).
    value_bytes : int
        Bytes per decoded value (4 or 8).
    params : scaleml.cost_model.CostParams
        alpha, beta, gamma (delta is the engine's and does not apply).

    Returns
    -------
    tuple of float
        Seconds, and bytes each rank sends: (P-1) messages, what it also receives.
    """
    sent = (P - 1) * message_bytes
    return (P - 1) * params.alpha + sent * params.beta + params.gamma * P * n * value_bytes, sent


def _bytes_sent(n: int, P: int, k: float, index_bytes: int, value_bytes: int, dense_input: bool,
                quantized_value_bytes: float = 0.0) -> dict[str, float]:
    """Bytes each algorithm sends per rank by the model: its prediction with beta = 1 and nothing else."""
    return algorithms.costs(n, P, k, k * P, index_bytes, value_bytes, False, dense_input, 0.0, 1.0, 0.0, 0.0,
                            quantized_value_bytes)


def model(args: argparse.Namespace) -> int:
    """Predictions of every algorithm, and the choice of auto; then the lossy formats (``--compression``)."""
    params = cost_model.get_params()
    overrides = {k: getattr(args, k) for k in ("alpha", "beta", "gamma", "delta") if getattr(args, k) is not None}
    params = cost_model.CostParams(**{**asdict(params), **overrides})
    p = params
    itemsize = np.dtype(args.dtype).itemsize
    bits_list = args.bits or [8.0 * itemsize]
    if any(not 0 < b <= 64 for b in bits_list):
        print("scaleml-bench model: --bits must be in (0, 64]", file=sys.stderr)
        return 2
    try:
        formats = {spec: value_format(make_format(spec, 0)) for spec in args.compression}
    except ValueError as exc:
        print(f"scaleml-bench model: {exc}", file=sys.stderr)
        return 2
    print(f"# cost model: alpha {params.alpha * 1e6:.2f} us, beta {params.beta * 1e9:.4f} ns/B "
          f"({1e-9 / params.beta:.3f} GB/s), gamma {params.gamma * 1e9:.4f} ns/B; {args.dtype}, "
          "independent uniformly spread indices")
    names = EXACT
    print(f"{'ranks':>6} {'count':>11} {'density':>8} {'bits':>5} " + " ".join(f"{a + '(ms)':>22}" for a in names)
          + f"  {'auto':>18} {'speedup':>8}")
    rows = []
    for P in args.ranks:
        for n in args.n:
            index_bytes = index_dtype(n).itemsize
            for density in args.density:
                for bits in bits_list:
                    k = int(n * density)
                    # The exact algorithms with values of bits/8 bytes (what auto chooses among)...
                    pred = algorithms.costs(n, P, k, k * P, index_bytes, bits / 8, False, False, p.alpha, p.beta,
                                            p.gamma, p.delta)
                    best = min(names, key=lambda a: pred[a])  # ties: registry order
                    # ... and the speedup against the dense AllReduce at full width.
                    baseline = algorithms.costs(n, P, k, k * P, index_bytes, itemsize, False, False, p.alpha,
                                                p.beta, p.gamma, p.delta)["dense"]
                    speedup = baseline / pred[best]
                    rows.append({"ranks": P, "count": n, "density": density, "bits": bits, "auto": best,
                                 "speedup_vs_dense": speedup, **{f"{a}_s": pred[a] for a in names}})
                    print(f"{P:>6d} {n:>11d} {density:>8.0e} {bits:>5g} "
                          + " ".join(f"{pred[a] * 1e3:>22.3f}" for a in names) + f"  {best:>18} {speedup:>8.2f}")
    lossy_rows = lossy_table(args, params, formats, itemsize) if formats else []
    node_rows = node_table(args, params, itemsize)
    node_lossy_rows = node_lossy_table(args, params, formats, itemsize) if formats else []
    node_sparse_rows = node_sparse_table(args, params, itemsize)
    if args.json:
        args.json.write_text(json.dumps({"params": params.to_json(), "rows": rows, "lossy_rows": lossy_rows,
                                         "node_rows": node_rows, "node_lossy_rows": node_lossy_rows,
                                         "node_sparse_rows": node_sparse_rows}, indent=1))
    return 0


def node_shape(P: int, ranks_per_node: int) -> tuple[int, int, int]:
    """(nodes, ranks of the smallest node, of the largest) of P consecutive ranks cut into nodes of
    ``ranks_per_node`` (the last one may be smaller), as ``SCALEML_RANKS_PER_NODE`` cuts them."""
    L = min(ranks_per_node, P)
    return -(-P // L), P % L or L, L


def node_table(args: argparse.Namespace, params: cost_model.CostParams, itemsize: int) -> list[dict]:
    """Print and return the exact dense AllReduce on nodes of ``--ranks-per-node`` ranks: the flat algorithms
    (every message at the inter-node alpha, beta) next to ``hierarchical_dense`` (its intra-node steps at
    alpha_intra, beta_intra), with the bytes each rank sends across node boundaries."""
    p = params
    flat = ("dense", "ring")
    L = args.ranks_per_node
    print(f"\n# dense exact data on nodes of {L} ranks: predicted time (ms) and bytes sent across node boundaries "
          f"per rank (MB; a flat algorithm's every byte may cross one); intra-node alpha "
          f"{p.alpha_intra * 1e6:.2f} us, beta {p.beta_intra * 1e9:.4f} ns/B ({1e-9 / p.beta_intra:.3f} GB/s)")
    print(f"{'ranks':>6} {'nodes':>6} {'count':>11} " + " ".join(f"{a + '(ms)':>10} {'MB':>6}" for a in flat)
          + f" {'hierarchical_dense(ms)':>22} {'MB':>6} {'speedup':>8}")
    rows = []
    for P in args.ranks:
        nodes = node_shape(P, L)
        N, S = nodes[0], nodes[1]
        for n in args.n:
            index_bytes = index_dtype(n).itemsize
            pred = algorithms.costs(n, P, n, n * P, index_bytes, itemsize, False, True, p.alpha, p.beta, p.gamma,
                                    p.delta, nodes=nodes, intra=(p.alpha_intra, p.beta_intra))
            sent = {a: 2 * (P - 1) / P * n * itemsize for a in flat}
            sent["hierarchical_dense"] = 2 * (N - 1) / N * n / S * itemsize if nodes[2] > 1 else sent["ring"]
            best_flat = min(flat, key=lambda a: pred[a])
            speedup = pred[best_flat] / pred["hierarchical_dense"]
            rows.append({"ranks": P, "ranks_per_node": L, "nodes": N, "count": n, "speedup_vs_flat": speedup,
                         **{f"{a}_s": pred[a] for a in (*flat, "hierarchical_dense")},
                         **{f"{a}_inter_node_bytes_per_rank": sent[a] for a in sent}})
            print(f"{P:>6d} {N:>6d} {n:>11d} " + " ".join(f"{pred[a] * 1e3:>10.2f} {_mb(sent[a]):>6}" for a in flat)
                  + f" {pred['hierarchical_dense'] * 1e3:>22.2f} {_mb(sent['hierarchical_dense']):>6} {speedup:>8.2f}")
    return rows


HIERARCHICAL_LOSSY = "hierarchical_quantized"
FLAT_LOSSY = tuple(a for a in LOSSY if a != HIERARCHICAL_LOSSY)


def node_lossy_table(args: argparse.Namespace, params: cost_model.CostParams, formats: dict,
                     itemsize: int) -> list[dict]:
    """Print and return the lossy formats on nodes of ``--ranks-per-node`` ranks: the flat quantized algorithms
    (every message at the inter-node alpha, beta) next to ``hierarchical_quantized`` (exact within the node at
    alpha_intra, beta_intra; compressed only across), with the bytes each rank sends across node boundaries."""
    p = params
    L = args.ranks_per_node
    print(f"\n# lossy formats on nodes of {L} ranks: predicted time (ms) and bytes sent across node boundaries "
          f"per rank (MB); {HIERARCHICAL_LOSSY} sums exactly within the node and compresses only across")
    print(f"{'ranks':>6} {'nodes':>6} {'count':>11} {'format':>9} "
          + _time_and_bytes_header((*FLAT_LOSSY, HIERARCHICAL_LOSSY))
          + f" {'speedup':>8}")
    rows = []
    for P in args.ranks:
        nodes = node_shape(P, L)
        N, S = nodes[0], nodes[1]
        for n in args.n:
            index_bytes = index_dtype(n).itemsize
            for spec, fmt in formats.items():
                q = fmt.value_bytes(n, itemsize)
                pred = algorithms.costs(n, P, n, n * P, index_bytes, itemsize, False, True, p.alpha, p.beta,
                                        p.gamma, p.delta, q, *p.codec(fmt.name), nodes=nodes,
                                        intra=(p.alpha_intra, p.beta_intra))
                sent = _bytes_sent(n, P, n, index_bytes, itemsize, True, q)
                sent_by = {a: sent[a] for a in FLAT_LOSSY}
                # one node: nothing crosses; one rank per node: the flat ring's bytes
                sent_by[HIERARCHICAL_LOSSY] = (2 * (N - 1) / N * n / S * q if nodes[2] > 1 else sent["quantized_ring"])
                best_flat = min(FLAT_LOSSY, key=lambda a: pred[a])
                speedup = pred[best_flat] / pred[HIERARCHICAL_LOSSY]
                rows.append({"ranks": P, "ranks_per_node": L, "nodes": N, "count": n, "format": spec,
                             "best_flat": best_flat, "speedup_vs_flat": speedup,
                             **{f"{a}_s": pred[a] for a in (*FLAT_LOSSY, HIERARCHICAL_LOSSY)},
                             **{f"{a}_inter_node_bytes_per_rank": sent_by[a] for a in sent_by}})
                print(f"{P:>6d} {N:>6d} {n:>11d} {spec:>9} "
                      + _time_and_bytes_cells(pred, sent_by, (*FLAT_LOSSY, HIERARCHICAL_LOSSY))
                      + f" {speedup:>8.2f}")
    return rows


HIERARCHICAL_SPARSE = "hierarchical_sparse"
NODE_SPARSE_OTHERS = ("recursive_doubling", "split_allgather", "split_dense", "dense", "hierarchical_dense")


def node_sparse_table(args: argparse.Namespace, params: cost_model.CostParams, itemsize: int) -> list[dict]:
    """Print and return sparse data on nodes of ``--ranks-per-node`` ranks, per (ranks, count, density): the flat
    exact algorithms (every message at the inter-node alpha, beta; all local ranks of a node share its link) and
    ``hierarchical_dense`` next to ``hierarchical_sparse`` (dense within the node at alpha_intra, beta_intra,
    sparse across), with the bytes each rank sends across node boundaries (a hierarchical owner's)."""
    p = params
    L = args.ranks_per_node
    others = NODE_SPARSE_OTHERS
    print(f"\n# sparse data on nodes of {L} ranks: predicted time (ms) and bytes sent across node boundaries per "
          f"rank (MB); {HIERARCHICAL_SPARSE} sums the entries sparsely within the node and sends each node's "
          "non-zeros across")
    print(f"{'ranks':>6} {'nodes':>6} {'count':>11} {'density':>8} "
          + _time_and_bytes_header((*others, HIERARCHICAL_SPARSE))
          + f" {'best other':>18} {'speedup':>8}")
    rows = []
    for P in args.ranks:
        nodes = node_shape(P, L)
        N, S = nodes[0], nodes[1]
        for n in args.n:
            index_bytes = index_dtype(n).itemsize
            c_s = index_bytes + itemsize
            for density in args.density:
                k = int(n * density)
                pred = algorithms.costs(n, P, k, k * P, index_bytes, itemsize, False, False, p.alpha, p.beta,
                                        p.gamma, p.delta, nodes=nodes, intra=(p.alpha_intra, p.beta_intra))
                sent = _bytes_sent(n, P, k, index_bytes, itemsize, False)
                sent_by = {a: sent[a] for a in others}
                sent_by["hierarchical_dense"] = (2 * (N - 1) / N * n / S * itemsize if nodes[2] > 1
                                                 else 2 * (P - 1) / P * n * itemsize)
                if nodes[2] > 1:  # an owner: its node's non-zeros on a shard, then the shard's reduced blocks
                    s = n / S
                    node_entries = cost_model.expected_union(int(s), density * s, L)
                    union = cost_model.expected_union(int(s), density * s, P)
                    sent_by[HIERARCHICAL_SPARSE] = (N - 1) / N * (min(node_entries * c_s, s * itemsize)
                                                                  + min(union * c_s, s * itemsize))
                else:  # one rank per node: the flat split_allgather
                    sent_by[HIERARCHICAL_SPARSE] = sent["split_allgather"]
                best = min(others, key=lambda a: pred[a])
                speedup = pred[best] / pred[HIERARCHICAL_SPARSE]
                rows.append({"ranks": P, "ranks_per_node": L, "nodes": N, "count": n, "density": density,
                             "best_other": best, "speedup_vs_best_other": speedup,
                             **{f"{a}_s": pred[a] for a in (*others, HIERARCHICAL_SPARSE)},
                             **{f"{a}_inter_node_bytes_per_rank": sent_by[a] for a in sent_by}})
                print(f"{P:>6d} {N:>6d} {n:>11d} {density:>8.0e} "
                      + _time_and_bytes_cells(pred, sent_by, (*others, HIERARCHICAL_SPARSE))
                      + f" {best:>18} {speedup:>8.2f}")
    return rows


def lossy_table(args: argparse.Namespace, params: cost_model.CostParams, formats: dict, itemsize: int) -> list[dict]:
    """Print and return the lossy predictions: per (ranks, count, format), the time and bytes sent per rank of
    the exact dense AllReduce, each quantized algorithm, and the allgather of compressed vectors."""
    p = params
    columns = ("dense", *LOSSY, ALLGATHER)
    print(f"\n# lossy formats, dense data: predicted time (ms) and bytes sent per rank (MB = 1e6 B); "
          f"{ALLGATHER} = every rank receives the P-1 compressed vectors of the others")
    print(f"{'ranks':>6} {'count':>11} {'format':>9} {'q(B)':>6} "
          + _time_and_bytes_header(columns) + f"  {'best':>16} {'speedup':>8}")
    rows = []
    for P in args.ranks:
        for n in args.n:
            index_bytes = index_dtype(n).itemsize
            for spec, fmt in formats.items():
                q = fmt.value_bytes(n, itemsize)
                # Dense data (k = n); the lossy algorithms read the caller's dense array as it is.
                pred = algorithms.costs(n, P, n, n * P, index_bytes, itemsize, False, True, p.alpha, p.beta,
                                        p.gamma, p.delta, q, *p.codec(fmt.name))
                sent = _bytes_sent(n, P, n, index_bytes, itemsize, True, q)
                times = {a: pred[a] for a in ("dense", *LOSSY)}
                sent_by = {a: sent[a] for a in ("dense", *LOSSY)}
                times[ALLGATHER], sent_by[ALLGATHER] = allgather_cost(
                    n, P, fmt.bytes(n, itemsize) + HEADER_BYTES + 8, itemsize, p)
                best = min(LOSSY, key=lambda a: times[a])
                speedup = times["dense"] / times[best]
                rows.append({"ranks": P, "count": n, "format": spec, "quantized_value_bytes": q, "best": best,
                             "speedup_vs_dense": speedup, **{f"{a}_s": times[a] for a in columns},
                             **{f"{a}_bytes_per_rank": sent_by[a] for a in columns}})
                print(f"{P:>6d} {n:>11d} {spec:>9} {q:>6.3f} "
                      + _time_and_bytes_cells(times, sent_by, columns)
                      + f"  {best:>16} {speedup:>8.2f}")
    return rows


def _time_and_bytes_header(names: tuple[str, ...]) -> str:
    """The heads of a (predicted ms, MB sent) column pair per algorithm, each as wide as the name."""
    return " ".join(f"{a + '(ms)':>{len(a) + 4}} {'MB':>6}" for a in names)


def _time_and_bytes_cells(seconds: dict[str, float], sent: dict[str, float], names: tuple[str, ...]) -> str:
    """The (predicted ms, MB sent) cells of each algorithm, under :func:`_time_and_bytes_header`."""
    return " ".join(f"{seconds[a] * 1e3:>{len(a) + 4}.2f} {_mb(sent[a]):>6}" for a in names)


def _mb(nbytes: float) -> str:
    """Megabytes, to three significant digits (a column of bytes that spans several decades)."""
    mb = nbytes / 1e6
    if mb == 0:
        return "0"
    return f"{mb:.{max(0, 2 - int(math.floor(math.log10(mb))))}f}" if mb < 100 else f"{mb:.0f}"
