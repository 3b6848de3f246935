"""A timeline of every collective's phases on each rank, in the Chrome trace format.

Set ``SCALEML_TIMELINE=path`` (or call :func:`start`) and each rank writes
its own file: ``path`` with ``{rank}`` replaced, or with ``.rank<N>`` before
its suffix (``trace.json`` -> ``trace.rank0.json``, ``trace.rank1.json``...).
Merge them into one trace, then open it in ``chrome://tracing`` or
https://ui.perfetto.dev::

    SCALEML_TIMELINE=trace.json mpiexec -n 4 python train.py
    python -m scaleml timeline merge trace.json -o trace_all.json

Each file is ``{"traceEvents": [...]}``: complete events (``"ph": "X"``) with
``pid`` the rank (named ``rank N``), ``tid`` a lane per collective
(``Allreduce``, ``sparse_allreduce``, ``quantized_allreduce``,
``topk_allreduce``, ``adaptive_allreduce``), ``ts`` and ``dur`` in
microseconds (wall clock, so ranks on one node line up). One event spans each
call (``cat`` ``"call"``, ``args``: ``n``, ``dtype``, ``algorithm``,
``format``, ``bytes`` sent, ``nnz_max``...); inside it one event per phase,
``cat`` naming the phase:

``scan``
    This rank's local work before any message: buffer checks, counting the
    non-zeros of a dense input, sorting sparse input.
``encode``
    Extracting the non-zeros (the drop-in, before a sparse algorithm), top-k
    selection (the encoding of the lossy formats happens inside ``algorithm``).
``agreement``
    The small MPI_Allreduce that checks arguments and agrees on sizes.
``plan``
    The cost model's prediction and the choice of algorithm.
``algorithm``
    The algorithm itself (named after it; ``MPI_Allreduce`` where MPI ran).
``decode``
    Writing the result out (densifying, copying a sparse result).

Events are written as they come (buffered, at most about a second late) and
the file is closed at exit, so it is valid JSON once the process exits
normally; :func:`merge` also reads files cut short by a crash. When no
timeline is on, the collectives check one module flag and do nothing else.
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import _log, config

__all__ = ["start", "stop", "flush", "path", "merge", "rank_files", "ON"]

ON = False
"""Whether a timeline is being written (the collectives' one check)."""

_FLUSH_EVENTS = 512
_FLUSH_SECONDS = 1.0


class _Writer:
    """The rank's timeline file: a JSON object whose event list grows until :meth:`close`."""

    def __init__(self, path: Path, rank: int) -> None:
        self.path = path
        self.rank = rank
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (open until exit)
        self.lanes: dict[str, int] = {}
        self.pending: list[str] = []
        self.first = True
        self.last_flush = time.monotonic()
        self.lock = threading.Lock()
        # Wall-clock microseconds from perf_counter: ranks on one node share the clock.
        self.offset = time.time() - time.perf_counter()
        self.file.write('{"traceEvents": [\n')
        self._add({"name": "process_name", "ph": "M", "pid": rank, "tid": 0, "args": {"name": f"rank {rank}"}})
        self._add({"name": "process_sort_index", "ph": "M", "pid": rank, "tid": 0, "args": {"sort_index": rank}})
        self.flush()

    def lane(self, name: str) -> int:
        tid = self.lanes.get(name)
        if tid is None:
            tid = self.lanes[name] = len(self.lanes) + 1
            self._add({"name": "thread_name", "ph": "M", "pid": self.rank, "tid": tid, "args": {"name": name}})
            self._add({"name": "thread_sort_index", "ph": "M", "pid": self.rank, "tid": tid,
                       "args": {"sort_index": tid}})
        return tid

    def _add(self, event: dict[str, Any]) -> None:
        self.pending.append(json.dumps(event, separators=(",", ":"), default=str))

    def complete(self, name: str, cat: str, tid: int, start: float, end: float, args: dict | None) -> None:
        """One ``"X"`` event from ``start`` to ``end`` (perf_counter seconds)."""
        event = {"name": name, "cat": cat, "ph": "X", "pid": self.rank, "tid": tid,
                 "ts": round((start + self.offset) * 1e6, 3), "dur": round((end - start) * 1e6, 3)}
        if args:
            event["args"] = args
        self._add(event)

    def maybe_flush(self) -> None:
        if len(self.pending) >= _FLUSH_EVENTS or time.monotonic() - self.last_flush > _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            if self.pending and not self.file.closed:
                self.file.write(("" if self.first else ",\n") + ",\n".join(self.pending))
                self.file.flush()
                self.first = False
            self.pending.clear()
            self.last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        with self.lock:
            if not self.file.closed:
                self.file.write("\n]}\n")
                self.file.close()


class Call:
    """The events of one collective call: :meth:`mark` closes a phase, :meth:`end` the call."""

    __slots__ = ("name", "start", "last", "phases")

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = self.last = time.perf_counter()
        self.phases: list[tuple[str, str, float, float]] = []

    def mark(self, phase: str, cat: str | None = None) -> None:
        """Close the phase that began at the previous mark (or the call's start) now, naming it ``phase``."""
        now = time.perf_counter()
        self.phases.append((phase, cat or phase, self.last, now))
        self.last = now

    def end(self, **args: Any) -> None:
        """Close the call: its event (with ``args``) and its phases' go to the file."""
        now = time.perf_counter()
        stack = _stack()
        while stack and stack.pop() is not self:  # calls above it that raised never ended: dropped
            pass
        writer = _writer
        if writer is None:
            return
        tid = writer.lane(self.name)
        writer.complete(self.name, "call", tid, self.start, now, args)
        for phase, cat, t0, t1 in self.phases:
            writer.complete(phase, cat, tid, t0, t1, None)
        writer.maybe_flush()


_local = threading.local()
_writer: _Writer | None = None


def _stack() -> list[Call]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def begin(name: str) -> Call | None:
    """A new :class:`Call` on lane ``name`` (the collective's), or None when no timeline is on."""
    if _writer is None:
        return None
    call = Call(name)
    stack = _stack()
    if len(stack) > 64:  # calls that raised and never ended
        del stack[:32]
    stack.append(call)
    return call


def current() -> Call | None:
    """The innermost call being recorded on this thread (for :func:`scaleml.engine.run_algorithm`'s phases)."""
    if _writer is None:
        return None
    stack = _stack()
    return stack[-1] if stack else None


def span(lane: str, phase: str, cat: str, start: float, end: float, **args: Any) -> None:
    """Record a call of one phase that ran from ``start`` to ``end`` (perf_counter seconds)."""
    writer = _writer
    if writer is None:
        return
    tid = writer.lane(lane)
    writer.complete(lane, "call", tid, start, end, args)
    writer.complete(phase, cat, tid, start, end, None)
    writer.maybe_flush()


def start(template: str | os.PathLike, rank: int | None = None) -> Path:
    """Start writing this rank's timeline (stopping the one being written, if any).

    Parameters
    ----------
    template : str or path
        The path of ``SCALEML_TIMELINE``: ``{rank}`` is replaced by the rank,
        else ``.rank<N>`` goes before the suffix.
    rank : int, optional
        The rank in the file (default: the rank in ``MPI.COMM_WORLD``).

    Returns
    -------
    pathlib.Path
        This rank's file.
    """
    global _writer, ON
    stop()
    r = _log.world_rank() if rank is None else int(rank)
    path = config.timeline_path(str(template), r)
    _writer = _Writer(path, r)
    ON = True
    _log.set_timeline(span)  # the drop-in's MPI calls go on it too
    return path


def stop() -> None:
    """Close the timeline file (valid JSON from then on); recording stops."""
    global _writer, ON
    writer, _writer, ON = _writer, None, False
    if writer is not None:
        writer.close()
    _log.set_timeline(None)


def flush() -> None:
    """Write the buffered events now."""
    if _writer is not None:
        _writer.flush()


def path() -> Path | None:
    """This rank's timeline file, or None when no timeline is on."""
    return None if _writer is None else _writer.path


atexit.register(stop)


# ---- reading and merging -------------------------------------------------------------------

def read(file: str | os.PathLike) -> dict[str, Any]:
    """A timeline file as ``{"traceEvents": [...]}``, also when the process died before closing it."""
    text = Path(file).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        body = text.rstrip().rstrip(",")
        cut = body.rfind("}")  # the last complete event (a crash may leave half a line)
        data = json.loads(body[:cut + 1] + "\n]}" if cut >= 0 else '{"traceEvents": []}')
    if isinstance(data, list):  # the JSON array form of the format
        data = {"traceEvents": data}
    return data


def rank_files(template: str | os.PathLike) -> list[Path]:
    """The per-rank files written for ``SCALEML_TIMELINE=template``, in rank order."""
    pattern = str(template)
    if "{rank" in pattern:
        globbed = pattern.replace("{rank}", "*")
    else:
        p = Path(pattern)
        globbed = str(p.with_name(f"{p.stem}.rank*{p.suffix}") if p.suffix else p.with_name(f"{p.name}.rank*"))
    files = [Path(f) for f in glob.glob(os.path.expanduser(globbed))]

    def rank_of(f: Path) -> int:
        digits = "".join(c if c.isdigit() else " " for c in f.name).split()
        return int(digits[-1]) if digits else 0

    return sorted(files, key=rank_of)


def merge(files: Iterable[str | os.PathLike], out: str | os.PathLike | None = None,
          rebase: bool = True) -> dict[str, Any]:
    """Merge per-rank timeline files into one trace (each rank stays its own process).

    Parameters
    ----------
    files : iterable of paths
        The ranks' files; a single path that is a ``SCALEML_TIMELINE``
        template (``trace.json`` for ``trace.rank*.json``) stands for them all.
    out : path, optional
        Where to write the merged trace.
    rebase : bool
        Start the time axis at the first event of any rank.

    Returns
    -------
    dict
        The merged ``{"traceEvents": [...]}``.
    """
    paths = [Path(f) for f in files]
    if len(paths) == 1 and not paths[0].exists():
        paths = rank_files(paths[0])
    if not paths:
        raise FileNotFoundError("no timeline files to merge")
    events: list[dict[str, Any]] = []
    for p in paths:
        events.extend(read(p).get("traceEvents", []))
    timed = [e["ts"] for e in events if "ts" in e]
    if rebase and timed:
        origin = min(timed)
        for e in events:
            if "ts" in e:
                e["ts"] = round(e["ts"] - origin, 3)
    merged = {"traceEvents": events, "displayTimeUnit": "ms",
              "otherData": {"source": "scaleml", "files": [str(p) for p in paths]}}
    if out is not None:
        Path(out).write_text(json.dumps(merged, separators=(",", ":")) + "\n", encoding="utf-8")
    return merged


def _configure_from_environment() -> None:
    template = config.value("SCALEML_TIMELINE")
    if template:
        start(template)


_configure_from_environment()
