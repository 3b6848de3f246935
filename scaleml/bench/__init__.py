"""``scaleml-bench``: micro-benchmark of ScaleML's collectives against ``MPI_Allreduce``.

Run under ``mpiexec``/``srun``; rank 0 prints one row per case::

    mpiexec -n 4 scaleml-bench --n 4194304 --density 0.01
    mpiexec -n 4 python -m scaleml.bench -b 4K -e 64M -f 4 --density 1e-3 1e-2 --json out.json --plot out.png
    mpiexec -n 2 scaleml-bench calibrate        # measure alpha, beta, gamma; auto uses them from then on
    scaleml-bench model --n 4194304 --ranks 4 64 1024 --density 1e-3 1e-2 1e-1

Subcommands: ``run`` (the sweep, the default when none is named), ``calibrate`` and ``model``, each with
its own ``--help``. Every flag is checked before any measurement; a usage error is printed once, by rank
0, and every rank exits with status 2.

Conventions follow nccl-tests and the OSU benchmarks, with nccl-tests' flags (``-b``/``-e``/``-f`` sizes in
bytes of the dense vector, ``-n`` iterations, ``-w`` warm-up, ``-c`` check, ``-d`` datatype, ``-o`` op;
``-i`` stays the iterations, as in OSU, and nccl-tests' ``-i`` is ``--stepbytes``): warm-up then timed
iterations, each iteration fenced by a barrier, time = per-rank average over iterations
reported as min/avg/max over ranks, ``algbw = data size / time`` and ``busbw = algbw * factor``, with
nccl-tests' data size and factor of the method's collective (:func:`bus_bandwidth_factor`): 2(P-1)/P for
AllReduce, (P-1)/P and P vectors for the allgather-based ``allgather:FORMAT``; a final
``# Avg bus bandwidth`` line per method, and ``# Out of bounds values`` under ``-c 1``.
Every method runs on the same data in the same run as the ``MPI_Allreduce`` baseline, and its speedup is
the ratio of the two
average times. Beside them, the median over iterations of each iteration's
slowest rank (``time_median_us``, column ``med(us)``) and the ratio of the
baseline's and the method's medians (``speedup_median_vs_mpi``, JSON/CSV only)
are robust to a few slow iterations. The error columns compare a call's result
with the exact sum (``MPI_Allreduce`` of the same data in float64):
``rel.err`` = ``||result - exact|| / ||exact||`` (``rel_error``), ``max.err``
the largest deviation over the largest magnitude (``max_rel_error``); JSON/CSV
add ``rel_error_time_avg``, the error of the mean of the timed calls (what error
feedback recovers over several calls). ``--compression NAME`` adds the lossy
collectives and the ``torch.distributed`` baselines
(:data:`~scaleml.bench.methods.COMPRESSION_NAMES`)::

    mpiexec -n 4 scaleml-bench --n 4194304 --density 1 --compression qsgd4 onebit_ef topk0.01 gloo_fp16

A method is one registration (:func:`register`): a function that receives the
case and returns a callable performing one collective and returning the dense
result, the bytes this rank sent and the algorithm that ran.

Modules: :mod:`~scaleml.bench.cli` (arguments, dispatch, the sweep, table/JSON/CSV/plot output),
:mod:`~scaleml.bench.methods` (:class:`Case`, the registry, lossless and ``--compression`` methods),
:mod:`~scaleml.bench.measure` (timing and one row per method of a case), :mod:`~scaleml.bench.calibrate`
(the ``calibrate`` subcommand and the alpha/beta fits) and :mod:`~scaleml.bench.model` (the ``model``
subcommand). The functions ``calibrate``, ``model`` and ``measure`` live in the modules of the same names
(``scaleml.bench.calibrate.calibrate``, ...): re-exporting them here would hide those modules.
"""

from __future__ import annotations

from .calibrate import alpha_under_load, beta_under_load, fit_alpha_beta
from .cli import (
    COLUMNS,
    SCHEMA_VERSION,
    average_bus_bandwidth,
    build_calibrate_parser,
    build_main_parser,
    build_model_parser,
    build_parser,
    check_output_path,
    format_row,
    format_size,
    header,
    main,
    parse_dtype,
    parse_size,
    plot,
    resolve_methods,
    run,
    sizes_from,
    validate_run,
)
from .measure import package_versions, run_case, run_metadata
from .methods import (
    BASELINE,
    BUILTIN,
    COLLECTIVES,
    COMPRESSION_NAMES,
    DEFAULT_COMPRESSION,
    LOSSLESS,
    METHODS,
    Case,
    MethodUnavailable,
    Runner,
    bandwidths,
    bus_bandwidth_factor,
    register,
    register_compression,
)

__all__ = [
    "BASELINE", "BUILTIN", "COLLECTIVES", "COLUMNS", "COMPRESSION_NAMES", "DEFAULT_COMPRESSION", "LOSSLESS",
    "METHODS", "SCHEMA_VERSION", "Case", "MethodUnavailable", "Runner", "alpha_under_load",
    "average_bus_bandwidth", "bandwidths", "beta_under_load", "build_calibrate_parser", "build_main_parser",
    "build_model_parser", "build_parser", "bus_bandwidth_factor", "check_output_path", "fit_alpha_beta",
    "format_row", "format_size", "header", "main", "package_versions", "parse_dtype", "parse_size", "plot",
    "register", "register_compression", "resolve_methods", "run", "run_case", "run_metadata", "sizes_from",
    "validate_run",
]
