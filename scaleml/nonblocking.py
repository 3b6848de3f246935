"""Nonblocking collectives: start a ScaleML collective now, overlap it with computation, wait for it later.

``scaleml.Comm.Iallreduce`` and the ``i``-forms of the collectives
(:func:`isparse_allreduce`, :func:`iquantized_allreduce`,
:func:`itopk_allreduce`, :func:`iadaptive_allreduce`) return a
:class:`Request` at once. The collective runs on a progress thread of this
process, on a private duplicate of the communicator, so it advances while the
caller computes: progress never depends on the caller testing the request (the
C engine and MPI release the GIL while they work and wait).

Rules, as for MPI's nonblocking collectives:

- Every rank starts the same nonblocking collectives on a communicator in the
  same order. Those on the progress thread run one after the other in that
  order; blocking calls on the same communicator may run meanwhile (they use
  other private communicators, so they never match a pending collective's
  messages). As with MPI's requests, the order in which requests complete is
  not promised.
- Buffers passed to a pending collective (input, output, error-feedback
  state) belong to it until its request completes.
- Needs an MPI library initialized with ``MPI_THREAD_MULTIPLE`` (mpi4py's
  default); anything less raises :class:`RuntimeError` on every rank when the
  first nonblocking collective starts.

Errors are the blocking call's: a bad argument on any rank makes the request
fail on every rank, and :meth:`Request.Wait` raises it.

The drop-in's ``Iallreduce`` has a second route. Handing a call to the
progress thread and waking the caller costs tens of microseconds, more than a
whole ``MPI_Iallreduce`` of a few KiB to a few hundred KiB on shared memory.
So where the engine chose plain MPI in a size class of messages below
``SCALEML_IALLREDUCE_THREAD_BYTES`` (4 MiB), the next calls of the class
are ``MPI_Iallreduce`` on the caller's buffers (an MPI period, as the
blocking drop-in's tuner has; :class:`IallreduceRoutes`), with the blocking
drop-in's safety in its MPI periods (:class:`MPIRequest`). Such a request
completes when it is waited for or tested, as mpi4py's do; its callbacks get a
thread that waits for it. Larger messages, and classes the engine wins,
stay on the thread, whose overlap pays for the hand-over.
"""

from __future__ import annotations

import atexit
import collections
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from mpi4py import MPI

from . import config
from .engine import EngineState, agree, engine_state

try:  # MPIRequest's fields and Wait in C (csrc/python/mpi_direct.c): Python 3.11+
    from ._mpi_direct import SumRequest as _SumRequest
except ImportError:  # below 3.11, or built without mpi4py's headers: MPIRequestPy's, in Python
    _SumRequest = None

__all__ = ["Request", "start", "waitall"]


class Request:
    """The handle of a nonblocking ScaleML collective (mpi4py's ``Request`` methods).

    ``Wait``/``Test`` as in mpi4py (``Wait`` raises the collective's exception
    if it failed); :meth:`result` waits and returns what the blocking call
    returns; :meth:`get_future` gives a ``torch.futures.Future`` (for DDP
    communication hooks).
    """

    __slots__ = ("_done", "_value", "_error", "_callbacks", "_lock", "_channel", "name")

    def __init__(self, name: str = "collective") -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Request], None]] = []
        self._lock = threading.Lock()
        self._channel: _Channel | None = None
        self.name = name

    def _finish(self, value: Any, error: BaseException | None) -> None:
        with self._lock:
            self._value, self._error = value, error
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def _wait(self, timeout: float | None = None) -> bool:
        # Not started and next in line: run it here rather than wake the progress thread and sleep.
        if not self._done.is_set() and self._channel is not None:
            self._channel.run_inline(self)
        return self._done.wait(timeout)

    def _check(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value

    def Wait(self, status: MPI.Status | None = None) -> bool:  # noqa: N802 (mpi4py's name)
        """Wait for the collective to complete; raise its exception if it failed.

        Returns ``True`` as mpi4py's ``Request.Wait`` does.
        """
        self._wait()
        self._check()
        return True

    def _poll(self) -> None:
        """Advance the request without blocking (the progress thread advances this kind by itself)."""

    def Test(self, status: MPI.Status | None = None) -> bool:  # noqa: N802
        """Whether the collective completed (raises its exception if it failed)."""
        self._poll()
        if not self._done.is_set():
            return False
        self._check()
        return True

    def wait(self) -> Any:
        """Wait and return the blocking call's return value (raise its exception)."""
        self._wait()
        return self._check()

    def test(self) -> tuple[bool, Any]:
        """``(flag, value)``: whether it completed and, if so, the blocking call's return value."""
        self._poll()
        if not self._done.is_set():
            return False, None
        return True, self._check()

    def result(self, timeout: float | None = None) -> Any:
        """The blocking call's return value, waiting at most ``timeout`` seconds (``TimeoutError`` then)."""
        if not self._wait(timeout):
            raise TimeoutError(f"{self.name} did not complete within {timeout} s")
        return self._check()

    def done(self) -> bool:
        """Whether the collective completed (successfully or not); never raises."""
        self._poll()
        return self._done.is_set()

    def add_done_callback(self, callback: Callable[[Request], None]) -> None:
        """Call ``callback(request)`` once it completes (at once if it has; else on the progress thread)."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def get_future(self, value: Callable[[Any], Any] | None = None):
        """A ``torch.futures.Future`` completed with the result (``value(result)`` if given) or the error."""
        import torch  # optional: only the hook's users need it

        future = torch.futures.Future()

        def complete(request: Request) -> None:
            if request._error is not None:
                future.set_exception(request._error)
                return
            try:
                future.set_result(request._value if value is None else value(request._value))
            except Exception as exc:  # noqa: BLE001 (the future carries it)
                future.set_exception(exc)

        self.add_done_callback(complete)
        return future

    def __repr__(self) -> str:
        state = "pending" if not self._done.is_set() else ("failed" if self._error else "complete")
        return f"<scaleml.nonblocking.Request {self.name} {state}>"


def waitall(requests: Iterable[Any]) -> None:
    """Wait for every request: ScaleML's :class:`Request` and mpi4py's ``MPI.Request`` alike.

    Raises the first failure after every request completed.
    """
    first: BaseException | None = None
    for request in requests:
        try:
            request.Wait()
        except Exception as exc:  # noqa: BLE001 (raised below, after the others completed)
            first = first or exc
    if first is not None:
        raise first


class _MPIRequestMethods:
    """What :class:`MPIRequest` adds to its fields and ``Wait`` (in C where built, else :class:`MPIRequestPy`)."""

    __slots__ = ()
    _value = None  # what the blocking call returns when MPI runs it
    name = "Iallreduce"

    def _finish(self, error: BaseException | None) -> None:
        self._error, self._recv, self._send = error, None, None
        self._complete = True
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            callback(self)

    def Test(self, status: MPI.Status | None = None) -> bool:  # noqa: N802
        """Whether the collective completed (raises its exception if it failed)."""
        if not (self._complete or self._checks.complete(self, False)):
            return False
        if self._error is not None:
            raise self._error
        return True

    def wait(self) -> None:
        """Wait and return the blocking call's return value (``None``: MPI ran it); raise its exception."""
        self.Wait()

    def test(self) -> tuple[bool, None]:
        """``(flag, value)``: whether it completed, and ``None`` (MPI ran it)."""
        return self.Test(), None

    def result(self, timeout: float | None = None) -> None:
        """``None`` (MPI ran it) once complete, waiting at most ``timeout`` seconds (``TimeoutError`` then)."""
        if timeout is not None:
            deadline = time.monotonic() + timeout
            while not (self._complete or self._checks.complete(self, False)):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{self.name} did not complete within {timeout} s")
                time.sleep(1e-4)
        self.Wait()

    def done(self) -> bool:
        """Whether the collective completed (successfully or not); never raises."""
        return self._complete or self._checks.complete(self, False)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(request)`` once it completes: at once if it has; else a thread waits for it."""
        with self._checks.lock:
            if not self._complete:
                first = self._callbacks is None
                self._callbacks = [*(self._callbacks or ()), callback]
                if first:  # nobody may wait for it: this thread does, so the callback (a torch future) fires
                    threading.Thread(target=self._checks.complete, args=(self, True), daemon=True,
                                     name="scaleml-iallreduce-wait").start()
                return
        callback(self)

    get_future = Request.get_future

    def __repr__(self) -> str:
        state = "pending" if not self._complete else ("failed" if self._error else "complete")
        return f"<scaleml.nonblocking.Request {self.name} (MPI) {state}>"


class MPIRequestPy(_MPIRequestMethods):
    """:class:`MPIRequest` in Python: where ``scaleml._mpi_direct`` is not built (and in the tests of that
    route). The same fields, and the same ``Wait`` as the C one (``SumRequest``, csrc/python/mpi_direct.c)."""

    __slots__ = ("_mpi", "_recv", "_send", "_local_error", "_checks", "_complete", "_error", "_callbacks")

    def __init__(self, checks: _MPIChecks, mpi_request: MPI.Request, recv: Any, local_error: Any,
                 send: Any = None) -> None:
        # send: the send buffer, kept alive until completion (MPI reads it until then)
        self._mpi, self._recv, self._send = mpi_request, recv, send
        self._local_error, self._checks = local_error, checks
        self._complete, self._error, self._callbacks = False, None, None

    def Wait(self, status: MPI.Status | None = None) -> bool:  # noqa: N802 (mpi4py's name)
        """Wait for the collective to complete; raise its exception if it failed (``True`` as mpi4py)."""
        if not self._complete:
            checks = self._checks
            with checks.lock:
                pending = checks.pending
                # The common case, inline: the oldest pending request, this rank's buffers good, no callback.
                if pending and pending[0] is self and self._local_error is None and self._callbacks is None:
                    try:
                        self._mpi.Wait()
                    except MPI.Exception as exc:
                        pending.popleft()
                        self._finish(exc)
                    else:
                        pending.popleft()
                        first = self._recv.item(0)
                        if first != first:
                            checks._agree(self)
                        else:
                            self._recv = self._send = None
                            self._complete = True
                            return True
                else:
                    checks.complete(self, True)
        if self._error is not None:
            raise self._error
        return True


if _SumRequest is not None:
    class MPIRequest(_SumRequest, _MPIRequestMethods):
        """A drop-in ``Iallreduce`` that MPI runs: ``MPI_Iallreduce`` on the caller's buffers.

        Where the engine lost to MPI in a size class, a nonblocking call costs
        what mpi4py's costs: no hand-over to the progress thread (which costs tens
        of microseconds, more than the whole collective below a few hundred KiB).
        Its safety is the blocking drop-in's MPI period's: a rank whose buffers are
        bad joins with NaN at index 0 of a scratch sum, and a sum with NaN at index
        0 leads every rank into an agreement that raises on every rank if any rank
        failed (see :class:`_MPIChecks`). It completes when waited for or tested,
        as mpi4py's requests do; a done-callback (or a torch future) gets a thread
        of its own that waits for it. Its fields, its start
        (``scaleml._mpi_direct.iallreduce_request``) and the common case of its
        ``Wait`` are C: this is the path whose every microsecond counts.
        """

        __slots__ = ()
else:
    MPIRequest = MPIRequestPy  # type: ignore[misc]


class _MPIChecks:
    """One communicator's :class:`MPIRequest` s, completed and checked in the order they started.

    The check of a request whose sum has NaN at index 0 is an agreement (a
    collective, on a private duplicate of the communicator): every rank sees
    NaN there, and every rank checks its requests in start order whatever
    order the caller waits in, so the agreements pair up on every rank.
    """

    def __init__(self, comm: MPI.Intracomm, codec: int) -> None:
        self.codec = codec  # the lossy format's fingerprint (the agreement compares it)
        private = comm.Dup()  # collective: made at the first call MPI runs, the same call on every rank
        private.Set_errhandler(MPI.ERRORS_RETURN)
        self.state = EngineState(private)
        self.pending: collections.deque[MPIRequest] = collections.deque()
        self.lock = threading.RLock()  # reentrant: a done-callback may wait for another request

    def start(self, comm: MPI.Intracomm, sendbuf: Any, recvbuf: Any, op: MPI.Op, recv: Any,
              local_error: Any) -> MPIRequest:
        """``MPI_Iallreduce`` on ``comm``; ``local_error``: this rank's buffers were bad (``recv`` is then the
        scratch sum with NaN at index 0, and the call joins with it). Called by the thread that starts the
        collectives of ``comm`` only (MPI's rule), so the start order is the order of ``pending``."""
        request = MPIRequest(self, comm.Iallreduce(sendbuf, recvbuf, op), recv, local_error)
        self.pending.append(request)
        return request

    def complete(self, request: MPIRequest, block: bool) -> bool:
        """Complete and check the requests that started before ``request`` and ``request``; whether it is done."""
        with self.lock:
            pending = self.pending
            while not request._complete:
                head = pending[0]
                try:
                    if block:
                        head._mpi.Wait()
                    elif not head._mpi.Test():
                        return False
                except MPI.Exception as exc:
                    pending.popleft()
                    head._finish(exc)
                    continue
                pending.popleft()
                first = head._recv.item(0)  # n >= 1 (IallreduceRoutes are made for n >= 1)
                if head._local_error is not None or first != first:
                    self._agree(head)
                elif head._callbacks is None:  # _finish(None), inline: this runs on every call
                    head._recv = head._send = None
                    head._complete = True
                else:
                    head._finish(None)
        return True

    def _agree(self, request: MPIRequest) -> None:
        """Every rank's sum has NaN at index 0: a rank failed (every rank raises), or the data held NaN."""
        try:
            agree(self.state, request._local_error, n=request._recv.size, value_bytes=request._recv.itemsize,
                  algorithm=0, out=0, nnz=0, op_name="Allreduce", codec=self.codec)
        except Exception as exc:  # noqa: BLE001 (the request carries it to the caller)
            request._finish(exc)
            return
        request._finish(None)

    def free(self) -> None:
        if not MPI.Is_finalized() and self.state.private != MPI.COMM_NULL:
            self.state.private.Free()


class IallreduceRoutes:
    """Where the drop-in's ``Iallreduce`` of one (count, dtype) runs: MPI or the progress thread.

    Decided alike on every rank, from values every rank has: the engine's
    agreed choice in the last call that ran on the progress thread, and the
    agreed times of MPI and of that choice there. Where the engine chose MPI
    (or won by less than :data:`ENGINE_WIN`), the next calls go to
    ``MPI_Iallreduce`` directly, for a period that grows (4, 16, ... 1024
    calls) while that holds; the call after the period runs on the thread
    again and re-checks. Where the engine won, the calls stay on the thread,
    and the last call of each period (4 ... 1024) decides the next. Deciding
    waits for that call, which has usually completed long before. (Messages
    of ``SCALEML_IALLREDUCE_THREAD_BYTES`` and more always run on the thread.)
    """

    def __init__(self, dtype: Any = None) -> None:
        self.dtype = dtype  # the class's value dtype (the drop-in's fast path compares it by identity)
        self.calls = 0
        self.mpi = False  # the route of the current period
        self.until = 0  # its last call
        self.period = INITIAL_PERIOD
        self.check: Request | None = None  # a call on the thread that decides the next period
        self.check_times: list[float | None] = []  # filled by that call (see started)
        self.checks: _MPIChecks | None = None
        """The communicator's checks of the calls MPI runs (set at the first such call)."""
        self.mpi_until = 0
        """Calls below this count run on MPI with no decision to make (the fast path's one comparison): the
        period's end while it is an MPI period and no check is pending, else 0."""

    def next(self) -> tuple[bool, bool]:
        """``(mpi, recheck)`` for the next call: MPI runs it, or the thread (re-checking MPI's win if ``recheck``)."""
        if self.check is not None:
            self.check._wait()
            mpi = self._mpi_wins()
            self.period = min(self.period * 4, MAX_PERIOD) if mpi == self.mpi else INITIAL_PERIOD
            self.mpi, self.until, self.check = mpi, self.calls + self.period, None
            self.mpi_until = self.until if mpi else 0
        self.calls += 1
        if self.mpi and self.calls <= self.until:
            return True, False
        return False, self.mpi

    def _mpi_wins(self) -> bool:
        """Whether the next period goes to MPI, from the completed check (agreed values only)."""
        if self.check._error is not None:  # failed on every rank (its agreement raised everywhere)
            return False
        info = self.check._value
        mpi_seconds, engine_seconds = self.check_times if len(self.check_times) == 2 else (None, None)
        if info is None or info.algorithm == "dense":
            return True  # the engine ran MPI
        # The engine won on the thread, where MPI is slower than on the caller's thread and the hand-over
        # comes on top: it must win by ENGINE_WIN to beat MPI_Iallreduce run by the caller.
        return mpi_seconds is not None and engine_seconds is not None and engine_seconds > ENGINE_WIN * mpi_seconds

    def started(self, request: Request, times: list[float | None]) -> None:
        """``request`` runs on the thread and fills ``times`` (MPI's agreed seconds in the class, the engine's
        estimated seconds when it ran): it decides the next period if it ends this one."""
        if self.calls >= self.until:
            self.check, self.check_times = request, times
            self.mpi_until = 0


INITIAL_PERIOD = 4
MAX_PERIOD = 1024
IALLREDUCE_THREAD_BYTES: int = config.value("SCALEML_IALLREDUCE_THREAD_BYTES")
"""Messages of at least this many bytes always run on the progress thread (its overlap pays for its
hand-over); smaller ones have IallreduceRoutes. A size, not a time: MPI's time measured on the thread
grows with the thread's own cost where ranks share cores, and a time threshold kept itself on the thread."""
ENGINE_WIN = 0.5
"""Below IALLREDUCE_THREAD_BYTES, an engine algorithm runs (on the thread) only when its estimate is below this
fraction of MPI's time (both measured on the thread); else MPI_Iallreduce, on the caller's thread, does."""


class _Channel:
    """A communicator's nonblocking collectives, run one at a time in issue order.

    A progress thread runs them, so they advance while the caller computes.
    A caller that waits for a collective that has not started, with nothing
    running before it, runs it itself: a call waited for at once then costs
    no hand-over between threads (the order is the same either way, so every
    rank still runs the same collectives in the same order).
    """

    def __init__(self, comm: MPI.Intracomm) -> None:
        self.comm = comm
        self._items: collections.deque = collections.deque()  # (request, work) not started, in issue order
        self._busy = False  # a collective is running (on the progress thread or in a caller's wait)
        self._stopping = False
        self._cond = threading.Condition()
        self._mpi_checks: dict[int, _MPIChecks] = {}
        self.workers: dict[tuple, Any] = {}
        """scaleml.Comm per settings over this channel's communicator (for Comm.Iallreduce)."""
        self._thread = threading.Thread(target=self._run, name="scaleml-progress", daemon=True)
        self._thread.start()

    def submit(self, request: Request, work: Callable[[], Any]) -> None:
        request._channel = self
        with self._cond:
            self._items.append((request, work))
            self._cond.notify_all()

    def _take(self, request: Request | None = None) -> tuple[Request, Callable[[], Any]] | None:
        """(Under the lock.) The next collective if it may start now (and is ``request``'s when given)."""
        if self._busy or not self._items or (request is not None and self._items[0][0] is not request):
            return None
        self._busy = True
        return self._items.popleft()

    def _execute(self, item: tuple[Request, Callable[[], Any]]) -> None:
        request, work = item
        value, error = None, None
        try:
            value = work()
        except BaseException as exc:  # noqa: BLE001 (the request carries it to the caller)
            error = exc
        request._finish(value, error)
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or (not self._busy and self._items))
                item = self._take()
                if item is None and self._stopping and not self._busy and not self._items:
                    return
            if item is not None:
                self._execute(item)

    def run_inline(self, request: Request) -> bool:
        """Run ``request``'s collective in this thread if it is next and nothing runs; whether it did."""
        with self._cond:
            item = self._take(request)
        if item is None:
            return False
        self._execute(item)
        return True

    def mpi_checks(self, comm: MPI.Intracomm, codec: int) -> _MPIChecks:
        """The checks of the requests MPI runs on ``comm`` (the user's communicator) for Comms whose lossy format
        has fingerprint ``codec``; made at first use (collective)."""
        checks = self._mpi_checks.get(codec)
        if checks is None:
            checks = self._mpi_checks[codec] = _MPIChecks(comm, codec)
        return checks

    def drain(self) -> None:
        """Wait until every started collective completed."""
        with self._cond:
            self._cond.wait_for(lambda: not self._busy and not self._items)

    def stop(self) -> None:
        self.drain()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()


_keyval: int | None = None
_channels: list[_Channel] = []
_channels_lock = threading.Lock()


def _free_channel(comm: MPI.Comm, keyval: int, channel: _Channel) -> None:
    channel.stop()
    for checks in channel._mpi_checks.values():
        checks.free()
    with _channels_lock:
        if channel in _channels:
            _channels.remove(channel)
    if not MPI.Is_finalized() and channel.comm != MPI.COMM_NULL:
        channel.comm.Free()


def channel(comm: MPI.Intracomm, duplicate: Callable[[], MPI.Intracomm] | None = None) -> _Channel:
    """The progress channel of ``comm`` (collective on first use: duplicates ``comm``; cached on it).

    ``duplicate`` makes the private communicator (default ``comm.Dup()``);
    ``scaleml.Comm`` passes its own ``Dup`` so the channel keeps its settings.
    """
    global _keyval
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        raise TypeError(f"expected an mpi4py intra-communicator, got {type(comm).__name__}")
    if _keyval is None:
        _keyval = MPI.Comm.Create_keyval(delete_fn=_free_channel)
    found = comm.Get_attr(_keyval)
    if found is not None:
        return found
    # Every rank is here (a nonblocking collective is collective), so every rank learns the same.
    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        raise RuntimeError("nonblocking ScaleML collectives need MPI initialized with MPI_THREAD_MULTIPLE "
                           "(mpi4py's default; check mpi4py.rc.thread_level)")
    private = duplicate() if duplicate is not None else comm.Dup()
    engine_state(private)  # made here, collectively, not inside the progress thread
    found = _Channel(private)
    comm.Set_attr(_keyval, found)
    with _channels_lock:
        _channels.append(found)
    return found


def start(fn: Callable[..., Any], comm: MPI.Intracomm, *args: Any, **kwargs: Any) -> Request:
    """Start ``fn(*args, comm=<private duplicate of comm>, **kwargs)`` on ``comm``'s progress thread.

    Parameters
    ----------
    fn : callable
        A blocking collective taking ``comm=`` (e.g. :func:`scaleml.quantized_allreduce`).
    comm : mpi4py.MPI.Intracomm or scaleml.Comm
        The communicator; collective like ``fn`` (every rank starts the same
        collectives in the same order).

    Returns
    -------
    Request
        Completes with ``fn``'s return value or its exception.
    """
    request = Request(getattr(fn, "__name__", "collective"))
    chan = channel(comm)
    chan.submit(request, lambda: fn(*args, comm=chan.comm, **kwargs))
    return request


@atexit.register
def _drain_at_exit() -> None:
    # Registered after mpi4py's finalizer, so it runs first: no collective is left inside MPI_Finalize.
    with _channels_lock:
        channels = list(_channels)
    for chan in channels:
        chan.drain()
