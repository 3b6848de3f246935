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
  same order. They run one after the other in that order; blocking calls on
  the same communicator may run meanwhile (they use other private
  communicators, so they never match a pending collective's messages).
- Buffers passed to a pending collective (input, output, error-feedback
  state) belong to it until its request completes.
- Needs an MPI library initialized with ``MPI_THREAD_MULTIPLE`` (mpi4py's
  default); anything less raises :class:`RuntimeError` on every rank when the
  first nonblocking collective starts.

Errors are the blocking call's: a bad argument on any rank makes the request
fail on every rank, and :meth:`Request.Wait` raises it.
"""

from __future__ import annotations

import atexit
import collections
import threading
from collections.abc import Callable, Iterable
from typing import Any

from mpi4py import MPI

__all__ = ["Request", "start", "waitall", "isparse_allreduce", "iquantized_allreduce", "itopk_allreduce",
           "iadaptive_allreduce"]


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

    def Test(self, status: MPI.Status | None = None) -> bool:  # noqa: N802
        """Whether the collective completed (raises its exception if it failed)."""
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
    from .sparse import engine_state

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


def isparse_allreduce(indices, values, n: int, comm: MPI.Intracomm = MPI.COMM_WORLD, **kwargs: Any) -> Request:
    """Nonblocking :func:`scaleml.sparse_allreduce`; the request's :meth:`Request.result` is its return value."""
    from .sparse import sparse_allreduce

    return start(sparse_allreduce, comm, indices, values, n, **kwargs)


def iquantized_allreduce(x, comm: MPI.Intracomm = MPI.COMM_WORLD, compression: object = None,
                         **kwargs: Any) -> Request:
    """Nonblocking :func:`scaleml.quantized_allreduce`."""
    from .quantized import quantized_allreduce

    return start(quantized_allreduce, comm, x, compression=compression, **kwargs)


def itopk_allreduce(grad, comm: MPI.Intracomm = MPI.COMM_WORLD, **kwargs: Any) -> Request:
    """Nonblocking :func:`scaleml.topk_allreduce`."""
    from .topk_allreduce import topk_allreduce

    return start(topk_allreduce, comm, grad, **kwargs)


def iadaptive_allreduce(grad, comm: MPI.Intracomm = MPI.COMM_WORLD, **kwargs: Any) -> Request:
    """Nonblocking :func:`scaleml.adaptive_allreduce`."""
    from .adaptive_allreduce import adaptive_allreduce

    return start(adaptive_allreduce, comm, grad, **kwargs)


@atexit.register
def _drain_at_exit() -> None:
    # Registered after mpi4py's finalizer, so it runs first: no collective is left inside MPI_Finalize.
    with _channels_lock:
        channels = list(_channels)
    for chan in channels:
        chan.drain()
