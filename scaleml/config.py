"""ScaleML's run-time configuration: every ``SCALEML_*`` environment variable, read and validated in one place.

The variables are read once, when ``scaleml`` is imported; a bad value raises
``ValueError`` there, naming the variable and what it accepts (every bad
variable at once). :func:`settings` lists each variable's effective value and
where it came from; ``python -m scaleml`` prints them.

=========================  ===========  ===================================================================
variable                   default      effect
=========================  ===========  ===================================================================
``SCALEML_DISABLE``        ``0``        ``1``: ``scaleml.Comm.Allreduce`` is ``MPI_Allreduce`` on every call,
                                        and every engine collective runs the exact ``dense`` algorithm
                                        (``MPI_Allreduce`` of dense vectors) instead of choosing or being
                                        told one. Overrides every other setting and argument.
``SCALEML_ALGORITHM``      ``auto``     An algorithm of :data:`scaleml.algorithms.NAMES` that replaces
                                        ``algorithm="auto"`` (the default) wherever it applies; an
                                        algorithm named in code wins.
``SCALEML_COMPRESSION``    ``none``     ``qsgd1`` .. ``qsgd8``, ``fp16``, ``bf16``, ``onebit``: the lossy
                                        format of a ``scaleml.Comm`` made without ``compression=`` (an
                                        explicit opt-in to lossy results; ``compression="none"`` in code
                                        keeps a communicator exact).
``SCALEML_MIN_COUNT``      ``4096``     The default ``min_count`` of ``scaleml.Comm`` (integer >= 0).
``SCALEML_COST_FILE``      (see text)   The cost-model file (``scaleml-bench calibrate``); default
                                        ``~/.config/scaleml/cost_model.json``.
``SCALEML_LOG_LEVEL``      (unset)      ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``: log the ``scaleml``
                                        logger to stderr at that level, each line with the rank.
``SCALEML_TIMELINE``       (unset)      Write a Chrome-trace timeline of every collective's phases, one
                                        file per rank (see :mod:`scaleml.timeline`).
``SCALEML_IALLREDUCE_``    ``4194304``  ``scaleml.Comm.Iallreduce``: messages of at least this many bytes
``THREAD_BYTES``                        run on the progress thread (overlap); smaller ones in a size class
                                        the engine lost to MPI run as ``MPI_Iallreduce`` itself (no
                                        hand-over between threads). ``0``: always on the thread.
``SCALEML_TIMEOUT``        ``600``      Watchdog (:mod:`scaleml.watchdog`): seconds before an abort.
``SCALEML_STALL_WARNING``  ``60``       Watchdog: seconds before a warning.
``SCALEML_INJECT_FAULT``   (unset)      Test hook ``RANK:CALL[:WAIT]`` (:mod:`scaleml.watchdog`).
``SCALEML_ALPHA`` ..       (file)       Cost-model parameters (:mod:`scaleml.cost_model`): ``ALPHA``,
``SCALEML_DELTA``                       ``BETA``, ``GAMMA``, ``DELTA``, numbers >= 0.
``SCALEML_NO_SIMD``        (unset)      Anything but ``0``: the C kernels use their portable code.
``SCALEML_NUM_THREADS``    (see text)   Threads the C kernels split a large input over (integer >= 1);
                                        default: the cores of the rank's affinity divided by the ranks
                                        its launcher started on the node (unless bound to its own
                                        cores), at least 1 (:func:`cores_and_sharing`). Ranks that
                                        oversubscribe their cores (4 ranks on 2 cores) get 1 thread each.
``SCALEML_CUDA_LIBRARY``   (package)    The CUDA library to load (default ``scaleml/_scaleml_cuda.so``).
``SCALEML_CUDA_EMULATE``   ``0``        ``1``: CUDA arrays run on the CPU emulation of the CUDA library
                                        (tests without a GPU; ``docs/gpu.md``).
``SCALEML_CUDA_EMULATE_``  ``2``,       The emulation's devices and the bytes an emulated allocation may
``DEVICES``, ``_MEMORY``   ``2**40``    take (beyond: out of device memory).
=========================  ===========  ===================================================================

Precedence: an argument given in code wins over the environment, which sets
the defaults (``algorithm="auto"`` and ``compression=None`` are "not given");
``SCALEML_DISABLE=1`` overrides both. Every rank must see the same values
(the agreement of each collective checks the algorithm, the format and the
cost parameters, and raises on every rank when they differ).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpi4py import MPI

from . import algorithms
from ._native import lib
from .compress.names import VALUE_FORMATS, parse_format

__all__ = ["COMPRESSIONS", "ConfigWarning", "DEFAULT_MIN_COUNT", "LOG_LEVELS", "Setting", "VARIABLES",
           "apply_algorithm", "make_compressor", "parse", "reload", "resolve_compression", "set_log_level",
           "settings", "timeline_path", "value"]

DEFAULT_MIN_COUNT = 4096
"""``scaleml.Comm``'s ``min_count`` when neither the code nor ``SCALEML_MIN_COUNT`` gives one."""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
COMPRESSIONS = ("none", *VALUE_FORMATS)
"""What ``SCALEML_COMPRESSION`` and ``compression="..."`` take: ``none`` and the value formats at their defaults
(names parsed by :mod:`scaleml.compress.names`)."""
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ConfigWarning(UserWarning):
    """A ``SCALEML_*`` setting that is not an error but probably not what was meant."""


class _Bad(ValueError):
    """A value a parser rejects; the message says what is expected (the variable is added by the caller)."""


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _Bad("expected 1 or 0 (also true/false, yes/no, on/off)")


def _algorithm(text: str) -> str:
    if text == "auto" or text in algorithms.REGISTRY:
        return text
    close = difflib.get_close_matches(text, ("auto", *algorithms.NAMES), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise _Bad(f"expected 'auto' or one of {', '.join(algorithms.NAMES)}{hint}")


def _compression(text: str) -> str:
    lowered = text.lower()
    if lowered in COMPRESSIONS:
        return lowered
    raise _Bad(f"expected one of {', '.join(COMPRESSIONS)} (qsgdN: N bits per value)")


def _count(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise _Bad("expected an integer >= 0 (elements)")
    return number


def _positive(text: str, what: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise _Bad(f"expected an integer >= 1 ({what})")
    return number


def _threads(text: str) -> int:
    return _positive(text, "threads per rank")


def _ranks_per_node(text: str) -> int:
    return _positive(text, "consecutive ranks per emulated node")


def _bytes(text: str) -> int:
    try:
        return _count(text)
    except _Bad:
        raise _Bad("expected an integer >= 0 (bytes)") from None


def _nonnegative(text: str, expected: str = "a finite number >= 0") -> float:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise _Bad(f"expected {expected}")
    return number


def _seconds(text: str) -> float:
    return _nonnegative(text, "a number of seconds >= 0 (0 turns it off)")


def _fault(text: str) -> tuple[int, ...]:
    parts = text.split(":")
    try:
        numbers = tuple(int(p) for p in parts)
    except ValueError:
        numbers = ()
    if not 2 <= len(parts) <= 3 or len(numbers) != len(parts) or numbers[0] < 0 or numbers[1] < 1 \
            or (len(numbers) == 3 and numbers[2] < 1):
        raise _Bad("expected RANK:CALL[:WAIT] with RANK >= 0, CALL >= 1 and WAIT >= 1")
    return numbers


def _cost_file(text: str) -> Path:
    path = Path(text).expanduser()
    if path.is_dir():
        raise _Bad("expected a file, not a directory")
    if not path.exists():
        if not path.parent.is_dir():
            raise _Bad(f"no such file, and no directory {str(path.parent)!r} to calibrate into")
        return path  # `scaleml-bench calibrate` writes it; until then the defaults (a warning says so)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
            for key in ("alpha", "beta", "gamma", "delta"):
                if key in saved and not float(saved[key]) >= 0:
                    raise ValueError(f"{key} must be a number >= 0")
        except (OSError, ValueError, TypeError) as exc:
            raise _Bad(f"expected a cost-model file written by `scaleml-bench calibrate` ({exc})") from None
    return path  # /dev/null and the like: no parameters, the defaults


def _log_level(text: str) -> str:
    upper = text.upper()
    if upper in LOG_LEVELS:
        return upper
    raise _Bad(f"expected one of {', '.join(LOG_LEVELS)}")


def _timeline(text: str) -> str:
    try:
        text.format(rank=0)
    except (KeyError, IndexError, ValueError):
        raise _Bad("expected a path; its only placeholder may be {rank}") from None
    parent = Path(text.format(rank=0)).expanduser().parent
    if not parent.is_dir():
        raise _Bad(f"the directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise _Bad(f"the directory {str(parent)!r} is not writable")
    return text


def _any(text: str) -> str:
    return text


@dataclass(frozen=True)
class Variable:
    """One ``SCALEML_*`` variable: its parser, its default and what it does."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str


VARIABLES: dict[str, Variable] = {v.name: v for v in (
    Variable("SCALEML_DISABLE", _flag, False, "1: MPI_Allreduce / the exact dense algorithm everywhere"),
    Variable("SCALEML_ALGORITHM", _algorithm, "auto", "the algorithm that replaces algorithm='auto'"),
    Variable("SCALEML_COMPRESSION", _compression, "none", "scaleml.Comm's lossy format when code gives none"),
    Variable("SCALEML_MIN_COUNT", _count, DEFAULT_MIN_COUNT, "scaleml.Comm's default min_count"),
    Variable("SCALEML_COST_FILE", _cost_file, None, "the cost-model file (default ~/.config/scaleml/cost_model.json)"),
    Variable("SCALEML_LOG_LEVEL", _log_level, None, "log the 'scaleml' logger to stderr at this level, with ranks"),
    Variable("SCALEML_TIMELINE", _timeline, None, "Chrome-trace timeline file per rank ({rank} or .rankN)"),
    Variable("SCALEML_IALLREDUCE_THREAD_BYTES", _bytes, 1 << 22,
             "Iallreduce: bytes from which every call runs on the progress thread (overlap)"),
    Variable("SCALEML_TIMEOUT", _seconds, 600.0, "watchdog: seconds in a wait before the job is aborted"),
    Variable("SCALEML_STALL_WARNING", _seconds, 60.0, "watchdog: seconds in a wait before a warning"),
    Variable("SCALEML_INJECT_FAULT", _fault, None, "test hook RANK:CALL[:WAIT]"),
    Variable("SCALEML_RANKS_PER_NODE", _ranks_per_node, None,
             "cut consecutive ranks into nodes of this many (emulated nodes; default: MPI's shared-memory nodes)"),
    Variable("SCALEML_ALPHA", _nonnegative, None, "cost model: seconds per message"),
    Variable("SCALEML_BETA", _nonnegative, None, "cost model: seconds per byte sent"),
    Variable("SCALEML_GAMMA", _nonnegative, None, "cost model: seconds per byte of local work"),
    Variable("SCALEML_DELTA", _nonnegative, None, "cost model: the engine's fixed seconds per call"),
    Variable("SCALEML_NO_SIMD", _any, None, "anything but 0: the C kernels' portable code"),
    Variable("SCALEML_NUM_THREADS", _threads, None,
             "threads per rank of the C kernels (default: the rank's cores / the ranks sharing them)"),
    Variable("SCALEML_CUDA_LIBRARY", _any, None, "the CUDA library to load (default scaleml/_scaleml_cuda.so)"),
    Variable("SCALEML_CUDA_EMULATE", _flag, False,
             "1: device paths on the CPU emulation of the CUDA library (tests without a GPU)"),
    Variable("SCALEML_CUDA_EMULATE_DEVICES", _count, 2, "emulated devices (SCALEML_CUDA_EMULATE=1)"),
    Variable("SCALEML_CUDA_EMULATE_MEMORY", _bytes, 1 << 40, "bytes an emulated cudaMalloc may take"),
)}
"""Every variable ScaleML reads at run time."""

_BUILD_TIME = ("SCALEML_CFLAGS", "SCALEML_LDFLAGS", "SCALEML_CUDA", "SCALEML_CUDA_ARCHS", "SCALEML_NVCCFLAGS")
"""Read by the build (scaleml/_ffi_build.py, scaleml/_cuda_build.py), not here."""
_TEST_TIME = ("SCALEML_GPU_TESTS_REQUIRED", "SCALEML_GPU_MPI_RANKS", "SCALEML_GPU_SITE", "SCALEML_MPIEXEC")
"""Read by the GPU tests and scripts/gpu_check.sh, not here."""


@dataclass(frozen=True)
class Setting:
    """A variable's effective value and where it came from."""

    name: str
    value: Any
    source: str
    """``"env"`` (set in the environment) or ``"default"``."""
    text: str | None
    """The environment's text, or None when unset."""
    help: str


def _read(environ: dict[str, str] | os._Environ) -> dict[str, Setting]:
    found: dict[str, Setting] = {}
    problems: list[str] = []
    for var in VARIABLES.values():
        text = environ.get(var.name)
        stripped = text.strip() if text is not None else ""
        if not stripped:  # unset or empty: the default (as an empty value always meant)
            found[var.name] = Setting(var.name, var.default, "default", text, var.help)
            continue
        try:
            found[var.name] = Setting(var.name, var.parse(stripped), "env", text, var.help)
        except _Bad as exc:
            problems.append(f"{var.name}={stripped!r}: {exc}")
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:
        raise ValueError("invalid ScaleML environment variables:\n  " + "\n  ".join(problems))
    known = set(VARIABLES) | set(_BUILD_TIME) | set(_TEST_TIME)
    unknown = sorted(k for k in environ if k.startswith("SCALEML_") and k not in known)
    for name in unknown:  # a typo would otherwise be silently ignored
        close = difflib.get_close_matches(name[8:], [v[8:] for v in VARIABLES], n=1)
        hint = f" (did you mean SCALEML_{close[0]}?)" if close else ""
        warnings.warn(f"{name} is not a ScaleML variable{hint}; it is ignored", ConfigWarning, stacklevel=3)
    cost = found["SCALEML_COST_FILE"]
    if cost.source == "env" and not cost.value.exists():
        warnings.warn(f"SCALEML_COST_FILE={cost.text!r} does not exist (yet): the cost model's default parameters "
                      "are used until `scaleml-bench calibrate` writes it", ConfigWarning, stacklevel=3)
    return found


_settings: dict[str, Setting] = {}

DISABLE = False
"""``SCALEML_DISABLE``: read on the drop-in's planning path (a module attribute: one lookup)."""
ALGORITHM = "auto"
"""``SCALEML_ALGORITHM``."""


def reload(environ: dict[str, str] | None = None) -> dict[str, Setting]:
    """Read and validate the variables again (from ``environ``, default ``os.environ``).

    The watchdog, the cost model, logging and the timeline are configured at
    import; after a reload call :func:`scaleml.watchdog.set_timeout`,
    :func:`scaleml.cost_model.set_params`, :func:`scaleml.timeline.start` or
    :func:`set_log_level` for what changed. ``scaleml.Comm`` objects made from
    now on use the new defaults.

    Raises
    ------
    ValueError
        Naming every variable whose value is not valid.
    """
    global _settings, DISABLE, ALGORITHM
    _settings = _read(os.environ if environ is None else environ)
    DISABLE = bool(_settings["SCALEML_DISABLE"].value)
    ALGORITHM = _settings["SCALEML_ALGORITHM"].value
    lib.scaleml_set_num_threads(num_threads()[0])
    return dict(_settings)


def default_num_threads(cores: int, ranks_sharing: int) -> int:
    """The kernels' default thread count: ``cores`` (the rank's affinity) over the ``ranks_sharing`` them.

    >>> default_num_threads(8, 2), default_num_threads(2, 4), default_num_threads(3, 2)
    (4, 1, 1)
    """
    return max(1, cores // max(1, ranks_sharing))


_LOCAL_SIZE_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE",
                         "PALS_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")
"""Where launchers say how many ranks they started on this node (Hydra, Open MPI, MVAPICH, Cray PALS, Slurm)."""


def _affinity() -> tuple[int, bool]:
    """This rank's cores (``os.sched_getaffinity``) and whether its launcher bound it to part of the machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores, cores < (os.cpu_count() or cores)


def cores_and_sharing(environ: Any = None) -> tuple[int, int]:
    """This rank's cores (``os.sched_getaffinity``) and how many ranks of its node share them.

    No collective (``import scaleml`` must not be one): a rank whose affinity is a
    part of the machine was bound by its launcher and is taken to own those cores;
    a rank that may run on every core shares them with the ranks its launcher
    started on this node (``MPI_LOCALNRANKS``, ``OMPI_COMM_WORLD_LOCAL_SIZE``...),
    or, where no launcher says, with every rank of ``COMM_WORLD`` (the cautious
    guess: fewer threads, never oversubscribed cores).
    """
    env = os.environ if environ is None else environ
    cores, bound = _affinity()
    if bound:
        return cores, 1
    for name in _LOCAL_SIZE_VARIABLES:
        text = env.get(name, "").split("(")[0].split(",")[0].strip()  # Slurm: "2(x3),1"
        if text.isdigit() and int(text) > 0:
            return cores, int(text)
    world = MPI.COMM_WORLD.Get_size() if MPI.Is_initialized() and not MPI.Is_finalized() else 1
    return cores, max(1, world)


def limit_num_threads(ranks_on_node: int) -> int:
    """Lower the kernels' default thread count to the cores over ``ranks_on_node``, the ranks MPI finds on this
    rank's shared-memory node (called where a communicator's nodes are found, which is collective anyway).

    A launcher counts only the ranks it started itself: on one machine that several launchers' "hosts" share
    (the emulated cluster's namespaces) each rank would otherwise take every core. ``SCALEML_NUM_THREADS`` and a
    rank bound to part of the machine are left as they are. Returns the thread count in use.
    """
    current = lib.scaleml_get_num_threads()
    cores, bound = _affinity()
    if bound or _settings["SCALEML_NUM_THREADS"].value is not None:
        return current
    threads = min(current, default_num_threads(cores, ranks_on_node))
    if threads != current:
        lib.scaleml_set_num_threads(threads)
    return threads


def num_threads() -> tuple[int, str]:
    """The kernels' thread count and how it was found (``SCALEML_NUM_THREADS``, or cores / ranks sharing)."""
    setting = _settings["SCALEML_NUM_THREADS"]
    if setting.value is not None:
        return setting.value, "SCALEML_NUM_THREADS"
    cores, sharing = cores_and_sharing()
    return default_num_threads(cores, sharing), f"{cores} cores / {sharing} rank(s) of this node sharing them"


def parse(name: str, text: str) -> Any:
    """Variable ``name``'s value for ``text``; ``ValueError`` naming the variable when it is not valid."""
    try:
        return VARIABLES[name].parse(text.strip())
    except _Bad as exc:
        raise ValueError(f"{name}={text.strip()!r}: {exc}") from None


def settings() -> dict[str, Setting]:
    """Every variable's effective :class:`Setting`, by name."""
    return dict(_settings)


def value(name: str) -> Any:
    """The effective value of variable ``name`` (its default when unset)."""
    return _settings[name].value


def _no_log_level_setter(level: str | int | None) -> None:
    raise RuntimeError("scaleml._log is not imported: import scaleml first")


_log_level_setter: Callable[[str | int | None], None] = _no_log_level_setter


def register_log_level_setter(setter: Callable[[str | int | None], None]) -> None:
    """Register what :func:`set_log_level` calls: :func:`scaleml._log.set_log_level`, at that module's import.

    The logger's handler, format and rank filter live in :mod:`scaleml._log`,
    which reads this module's settings: it sits above this one and hands its
    setter down rather than being imported here.
    """
    global _log_level_setter
    _log_level_setter = setter


def set_log_level(level: str | int | None) -> None:
    """Log the ``scaleml`` logger to stderr at ``level`` with the rank on each line (as ``SCALEML_LOG_LEVEL``).

    Parameters
    ----------
    level : {"DEBUG", "INFO", "WARNING", "ERROR"}, int or None
        None removes ScaleML's handler: Python's logging configuration applies.
    """
    _log_level_setter(level)


# ---- what the entry points ask ---------------------------------------------------------------


def make_compressor(spec: str) -> object | None:
    """A new compressor object for a ``SCALEML_COMPRESSION`` value (``None`` for ``"none"``)."""
    if spec not in COMPRESSIONS:
        raise ValueError(f"unknown compression {spec!r}; expected one of {', '.join(COMPRESSIONS)}")
    return None if spec == "none" else parse_format(spec).compressor()


def resolve_compression(compression: object) -> object | None:
    """``scaleml.Comm``'s compressor: the argument when given, else ``SCALEML_COMPRESSION``'s.

    ``None`` is "not given" (the environment decides); a string of
    :data:`COMPRESSIONS` is the same as the object it names (``"none"``:
    exact, whatever the environment says). ``SCALEML_DISABLE`` makes it exact.
    """
    if DISABLE:
        return None
    if compression is None:
        return make_compressor(_settings["SCALEML_COMPRESSION"].value)
    if isinstance(compression, str):
        try:
            return make_compressor(_compression(compression))
        except _Bad as exc:
            raise ValueError(f"compression={compression!r}: {exc}, or a QSGD, Cast or OneBit object") from None
    return compression


def apply_algorithm(algorithm: Any, applies: Callable[[str], bool] = lambda name: True) -> Any:
    """The algorithm an entry point runs: ``SCALEML_ALGORITHM`` in place of ``"auto"`` where it ``applies``.

    Anything else (a name given in code, or a bad value the entry point
    rejects through its agreement) is returned as it is.
    """
    if ALGORITHM != "auto" and type(algorithm) is str and algorithm == "auto" and applies(ALGORITHM):
        return ALGORITHM
    return algorithm


def timeline_path(template: str, rank: int) -> Path:
    """Rank ``rank``'s timeline file: ``{rank}`` replaced, else ``.rank<N>`` before the suffix.

    >>> timeline_path("trace.json", 3)
    PosixPath('trace.rank3.json')
    """
    if "{rank" in template:
        return Path(template.format(rank=rank)).expanduser()
    path = Path(template).expanduser()
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}") if path.suffix else \
        path.with_name(f"{path.name}.rank{rank}")


reload()
