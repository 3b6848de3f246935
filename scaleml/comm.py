"""``scaleml.Comm``: a drop-in for an mpi4py communicator whose ``Allreduce`` exploits sparsity."""

from __future__ import annotations

import time
import weakref
from typing import Any

import numpy as np
from mpi4py import MPI

from . import _device, _log, algorithms, config, nonblocking
from ._dlpack import DL_HOST, host_view
from ._native import ffi, lib
from .dense_scan import ScanScratch, scan_nonzeros
from .engine import (
    AllreduceInfo,
    Call,
    EngineState,
    LocalError,
    agree,
    as_local_error,
    collective,
    engine_state,
    index_dtype,
)
from .errors import BufferLayoutError, DeviceError
from .nonblocking import IallreduceRoutes, MPIRequest, Request, channel
from .value_format import value_format

try:  # MPI_Allreduce and MPI_Iallreduce of plain float buffers from C (csrc/python/mpi_direct.c): Python 3.11+
    from ._mpi_direct import allreduce_sum as _allreduce_sum
    from ._mpi_direct import iallreduce_request as _iallreduce_request
except ImportError:  # below 3.11, or built without mpi4py's headers: mpi4py's calls do the same
    _allreduce_sum = _iallreduce_request = None

# Calls at the end of an MPI period whose times are reported at the next check (timing every call costs more).
_TIMED_CALLS = 8
_SUM, _IN_PLACE = MPI.SUM, MPI.IN_PLACE  # module constants: read on every call of the fast paths
# The engine's scan stores the non-zeros as it counts them (a sparse algorithm then needs no second pass), up to
# n / _FIRST_SHARE in a count's first call, then n / _SPARSE_SHARE after an input that had at most that many,
# n / _DENSE_SHARE after one that had more (dense data: the stores are wasted).
_FIRST_SHARE, _SPARSE_SHARE, _DENSE_SHARE = 16, 4, 256

# mpi4py Datatypes are not hashable: a list of pairs.
_FLOAT_TYPES = [(MPI.FLOAT, np.dtype(np.float32)), (MPI.DOUBLE, np.dtype(np.float64))]
_NUMPY_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_FLOAT32, _FLOAT64 = _NUMPY_FLOATS  # compared by identity on the fast paths (native byte order)


class _Unsupported(Exception):
    """The buffer spec is not one the engine handles: MPI handles it."""


def _parse_spec(spec: Any) -> tuple[Any, np.dtype, int | None, int]:
    """Split an mpi4py buffer spec into (buffer, float dtype, count or None, displacement).

    Accepts ``buf``, ``[buf, datatype]``, ``[buf, count, datatype]``,
    ``[buf, (count, displ), datatype]`` and ``[buf, count, displ, datatype]``;
    raises _Unsupported for anything that is not float32/float64 data. The
    buffer is read only when the spec's datatype, count and displacement let
    the engine take it (a DLPack object without a datatype is read for its
    element type, as mpi4py reads it: see :func:`_from_dlpack`).
    """
    datatype, count, displ = None, None, 0
    if isinstance(spec, (list, tuple)):
        if not 1 <= len(spec) <= 4:
            raise _Unsupported
        buf, *rest = spec
        if rest and isinstance(rest[-1], MPI.Datatype):
            datatype = rest.pop()
        if len(rest) == 1 and isinstance(rest[0], tuple) and len(rest[0]) == 2:
            count, displ = rest[0]
        elif len(rest) == 1:
            count = rest[0]
        elif len(rest) == 2:
            count, displ = rest
        elif rest:
            raise _Unsupported
    else:
        buf = spec
    if not (count is None or isinstance(count, (int, np.integer))) or not isinstance(displ, (int, np.integer)):
        raise _Unsupported
    if datatype is not None:
        # decided before the buffer is read: a datatype the engine never takes goes to MPI untouched
        dtype = next((dt for mpi_type, dt in _FLOAT_TYPES if datatype == mpi_type), None)
        if dtype is None:
            raise _Unsupported
        buf = _from_dlpack(buf)
    else:
        buf = _from_dlpack(buf)
        if not (isinstance(buf, np.ndarray) and buf.dtype in _NUMPY_FLOATS):
            raise _Unsupported
        dtype = buf.dtype
    return buf, dtype, None if count is None else int(count), int(displ)


def _from_dlpack(buf: Any) -> Any:
    """A flat numpy view of a DLPack object in host memory (a CPU ``torch.Tensor``, a JAX array), else ``buf``.

    mpi4py reads such objects through DLPack when they lack the buffer
    protocol; so does the drop-in, the way mpi4py does
    (:func:`scaleml._dlpack.host_view`): the producer's capsule is never
    consumed, so no deleter runs that mpi4py would not run (``np.from_dlpack``
    would call it). A host object that cannot be exported (a tensor that
    requires grad) is this rank's ``BufferError``, as in mpi4py; objects in
    device memory are left as they are: the call then goes to MPI, which
    reads or refuses them itself.
    """
    if isinstance(buf, np.ndarray) or not hasattr(buf, "__dlpack__"):
        return buf
    try:
        memoryview(buf)  # the buffer protocol comes first, as in mpi4py
        return buf
    except TypeError:
        pass
    try:
        device_type = int(buf.__dlpack_device__()[0])
    except Exception:  # noqa: BLE001 (not a usable DLPack object: MPI decides)
        return buf
    if device_type not in DL_HOST:
        return buf
    try:
        return host_view(buf, device_type)
    except Exception as exc:  # noqa: BLE001
        raise LocalError(6, BufferLayoutError(f"Allreduce: cannot read the {type(buf).__name__} through "
                                               f"DLPack ({exc})")) from exc


def _element_count(buf: Any, dtype: np.dtype, count: int | None, exact: bool = False) -> int:
    """Elements of ``dtype`` in ``buf`` (``count`` when the spec gave one).

    With ``exact``, a byte length that is not a multiple of the item size is a
    local error, as in mpi4py (which cannot infer the count then); without it
    (``_plan``, which must decide alike on every rank) the count is rounded down.
    """
    if count is not None:
        return count
    try:
        nbytes = buf.nbytes if isinstance(buf, np.ndarray) else memoryview(buf).nbytes
    except TypeError as exc:
        if not exact:
            raise
        raise LocalError(1, TypeError(f"Allreduce: object of type {type(buf).__name__} is not a buffer "
                                       f"({exc})")) from exc
    if exact and nbytes % dtype.itemsize:
        raise LocalError(2, ValueError(f"Allreduce: cannot infer count, buffer length {nbytes} is not a multiple "
                                        f"of datatype extent {dtype.itemsize} (as mpi4py; give a count)"))
    return nbytes // dtype.itemsize


def _as_array(buf: Any, dtype: np.dtype, count: int, displ: int, writable: bool) -> np.ndarray:
    """A flat float view of ``count`` elements of ``buf`` from ``displ`` on, in memory order (no copy).

    Takes what mpi4py takes: any object with the buffer protocol, C- or
    Fortran-contiguous (read in memory order, as MPI reads it). Local errors
    as LocalError: a non-contiguous or (when ``writable``) read-only buffer
    is a :class:`~scaleml.errors.BufferLayoutError` (a ``BufferError``, as in
    mpi4py); an object without the buffer protocol a ``TypeError``.
    """
    if isinstance(buf, np.ndarray):
        array = np.asarray(buf)  # a subclass (np.matrix) as a plain array: no copy
    else:
        try:
            view = memoryview(buf)
            array = np.frombuffer(view.cast("B"), np.uint8) if view.c_contiguous else np.asarray(view)
        except (TypeError, ValueError, NotImplementedError) as exc:
            raise LocalError(1, TypeError(f"Allreduce: object of type {type(buf).__name__} is not a "
                                           f"buffer numpy can read ({exc})")) from exc
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        raise LocalError(6, BufferLayoutError("Allreduce: buffer is not contiguous (mpi4py requires contiguous "
                                               "buffers; pass np.ascontiguousarray(x))"))
    if writable and not array.flags.writeable:
        raise LocalError(6, BufferLayoutError("Allreduce: receive buffer is read-only"))
    try:
        flat = array.reshape(-1, order="A").view(np.uint8)  # a view: C or Fortran order, whichever is memory's
    except (TypeError, ValueError) as exc:
        raise LocalError(1, TypeError(f"Allreduce: the {array.dtype} buffer cannot be read as bytes ({exc})")) \
            from exc
    start, stop = displ * dtype.itemsize, (displ + count) * dtype.itemsize
    if displ < 0 or count < 0 or stop > flat.size:
        raise LocalError(2, ValueError(f"Allreduce: {count} elements at displacement {displ} do not fit "
                                        f"in a buffer of {flat.size} bytes"))
    return flat[start:stop].view(dtype)


def _float_plan(spec: Any) -> tuple[np.dtype, int] | None:
    """(float dtype, count) of a buffer spec the engine could take, else None (never raises)."""
    if type(spec) is np.ndarray:  # the common case, quickly
        return (spec.dtype, spec.size) if spec.dtype in _NUMPY_FLOATS else None
    try:
        buf, dtype, count, _ = _parse_spec(spec)
        return dtype, _element_count(buf, dtype, count)
    except Exception:
        return None


def _spec_buffer(spec: Any) -> Any:
    """The buffer of an mpi4py buffer spec (``buf`` or ``[buf, ...]``)."""
    return spec[0] if isinstance(spec, (list, tuple)) and spec else spec


def _device_spec(spec: Any, what: str) -> Any:
    """A CUDA buffer spec as a :class:`scaleml._device.DeviceArray` (the whole array: specs with a count or a
    displacement are taken for host buffers only); a host buffer beside a CUDA one is a DeviceError."""
    if isinstance(spec, (list, tuple)):
        if len(spec) != 2 or not isinstance(spec[1], MPI.Datatype):
            raise TypeError(f"Allreduce: {what}: a CUDA array is taken alone or as [array, datatype]; a count or "
                            "a displacement: pass a slice of the array")
        spec = spec[0]
    view = _device.device_array(spec, what)
    if view is None:
        raise DeviceError(f"Allreduce: {what} is in host memory, the other buffer on a CUDA device: pass both "
                          "on one device")
    return view


_cuda_aware: bool | None = None


def cuda_aware_mpi() -> bool:
    """Whether the MPI moves CUDA memory itself (asked once; see ``scaleml_mpi_cuda_aware``)."""
    global _cuda_aware
    if _cuda_aware is None:
        how = ffi.new("const char **")
        _cuda_aware = lib.scaleml_mpi_cuda_aware(how) == 1
    return _cuda_aware


def _check_op(op: Any) -> None:
    if not isinstance(op, MPI.Op):
        raise LocalError(1, TypeError(f"Allreduce: op must be an mpi4py MPI.Op, got {type(op).__name__}"))


_PICKLED: weakref.WeakValueDictionary[tuple[Any, ...], Comm] = weakref.WeakValueDictionary()
"""(predefined handle's name, class, settings) -> the Comm that unpickles for them (see ``Comm.__reduce__``)."""


def _unpickle_comm(name: str, cls: type, settings: dict[str, Any]) -> MPI.Comm:
    """A pickled :class:`Comm` (see ``Comm.__reduce__``): a ``cls`` over ``MPI.<name>`` with ``settings``."""
    predefined = getattr(MPI, name)
    if predefined == MPI.COMM_NULL:  # a freed Comm: an object of its class over the null handle, as mpi4py's
        return MPI.Intracomm.__new__(cls, predefined)
    comm = cls.__new__(cls, predefined)
    Comm.__init__(comm, predefined, _lazy_state=True, **settings)  # not collective: nothing is made yet
    return _PICKLED.setdefault(comm._pickle_key(name), comm)


class Comm(MPI.Intracomm):
    """A drop-in replacement for an mpi4py intra-communicator (a subclass of ``MPI.Intracomm``).

    ``Allreduce(sendbuf, recvbuf, op)`` takes every argument mpi4py's takes and
    returns the same result; for ``MPI.SUM`` over float32/float64 buffers of at
    least ``min_count`` elements it counts the non-zeros, and when the alpha-beta
    model (:mod:`scaleml.cost_model`) predicts a sparse algorithm to be faster it
    runs that one instead of ``MPI_Allreduce``. ``Iallreduce`` is its
    nonblocking form. It *is* the wrapped communicator (the same MPI handle):
    every other method is mpi4py's own, and the constructors (``Dup``,
    ``Clone``, ``Split``, ``Split_type``, ``Create``, ``Create_group``,
    ``Idup``) return a :class:`Comm` with the same settings.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm or Comm
        The communicator to wrap (default ``MPI.COMM_WORLD``).
    min_count : int, optional
        Messages smaller than this go straight to ``MPI_Allreduce`` (the
        sparsity check would cost more than it can save). Default
        ``SCALEML_MIN_COUNT``, else 4096.
    algorithm : str
        ``"auto"`` or one of :data:`scaleml.algorithms.NAMES` to force (agreed
        between ranks like every other argument). ``"auto"`` takes
        ``SCALEML_ALGORITHM`` when it is set.
    compression : QSGD, Cast, OneBit or str, optional
        Opt into a lossy format for ``Allreduce`` with ``MPI.SUM`` on
        float32/float64 data: the engine may then run a dense quantized
        AllReduce or the sparse-to-quantized switch when the model and the
        measured times say it is faster than ``MPI_Allreduce`` (which stays
        the exact fallback). Lossless by default; never applied to other ops,
        integer data, or calls below ``min_count``. ``last_info.format`` says
        which format ran. ``None``: ``SCALEML_COMPRESSION`` (unset: exact); a
        name of :data:`scaleml.config.COMPRESSIONS` (``"qsgd4"``, ``"fp16"``...)
        stands for its object, ``"none"`` keeps the communicator exact.
    ranks_per_node : int, optional
        Cut consecutive ranks into nodes of this many (the last one may be
        smaller) for the node-aware algorithms (``hierarchical_dense``), so one
        machine emulates several nodes. Default ``SCALEML_RANKS_PER_NODE``,
        else the nodes MPI reports (ranks that share memory). Collective: every
        rank passes the same.

    ``SCALEML_DISABLE=1`` makes ``Allreduce`` ``MPI_Allreduce`` on every call
    (see :mod:`scaleml.config`).

    Examples
    --------
    >>> comm = scaleml.Comm(MPI.COMM_WORLD)   # the only line that changes
    >>> comm.Allreduce(grad, out, op=MPI.SUM)
    >>> comm.last_info.algorithm               # what ran, or None when MPI did
    >>> req = comm.Iallreduce(grad, out)       # nonblocking; req.Wait()
    >>> lossy = scaleml.Comm(MPI.COMM_WORLD, compression=scaleml.compress.QSGD(bits=4))
    """

    def __new__(cls, comm: MPI.Intracomm | None = None, **settings: Any) -> Comm:
        # mpi4py's constructor takes only the communicator; the settings are __init__'s.
        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(f"scaleml.Comm wraps an mpi4py Intracomm, got {type(comm).__name__}")
        return super().__new__(cls, comm)

    def __init__(self, comm: MPI.Intracomm | Comm | None = None, *, min_count: int | None = None,
                 algorithm: str = "auto", compression: object = None, ranks_per_node: int | None = None,
                 _lazy_state: bool = False) -> None:
        if comm is None:
            comm = MPI.COMM_WORLD
        if comm == MPI.COMM_NULL:
            raise ValueError("scaleml.Comm cannot wrap MPI.COMM_NULL")
        if min_count is None:
            min_count = config.value("SCALEML_MIN_COUNT")
        compression = config.resolve_compression(compression)  # SCALEML_COMPRESSION when none is given
        if algorithm != "auto":
            algorithms.get(algorithm)  # ValueError naming the choices
        elif not config.DISABLE:
            algorithm = config.apply_algorithm(algorithm)  # SCALEML_ALGORITHM
            if compression is None and not algorithms.get(algorithm if algorithm != "auto" else "dense").exact:
                raise ValueError(f"SCALEML_ALGORITHM={algorithm!r} is lossy: set SCALEML_COMPRESSION or pass "
                                 "compression= (QSGD, Cast or OneBit)")
        if algorithm != "auto" and compression is None and not algorithms.get(algorithm).exact:
            raise ValueError(f"algorithm {algorithm!r} is lossy: pass compression= (QSGD, Cast or OneBit)")
        self._format = value_format(compression) if compression is not None else None
        # The wrapped object itself (a Comm's own wrapped one): MPI's methods without this class's overrides.
        self._comm = comm.mpi_comm if isinstance(comm, Comm) else comm
        self.min_count = int(min_count)
        self.algorithm = algorithm
        self.compression = compression
        self.last_info: AllreduceInfo | None = None
        """What the last ``Allreduce`` did; ``None`` when it went to MPI unchanged."""
        # The private duplicate is made now, while every rank is in this (collective) constructor: made
        # lazily, its MPI_Comm_dup could pair with another rank's MPI_Allreduce on the user's communicator.
        self._ranks_per_node = ranks_per_node
        self._engine = None if _lazy_state else engine_state(self._comm, ranks_per_node)
        self._mpi_fast: dict[int, Any] = {}
        """count -> the tuner's statistics of the last class of that count (``stats.dtype`` says its dtype):
        the fast path's one int-keyed lookup."""
        self._scan_capacity: dict[int, int] = {}
        """count -> how many non-zeros the next engine call's scan stores (see _engine_allreduce)."""
        self._scan_scratch = ScanScratch()
        """Where the scans store them (this Comm's calls never overlap: Iallreduce runs on a worker Comm)."""
        self._iallreduce_routes: dict[tuple[int, np.dtype], IallreduceRoutes] = {}
        self._iallreduce_fast: dict[int, IallreduceRoutes] = {}
        """count -> the routes of the last class of that count (``routes.dtype``): the fast path's lookup."""
        """(count, dtype) -> where Iallreduce runs it (scaleml.nonblocking.IallreduceRoutes)."""
        _log.refresh()
        if _log.ON:
            _log.note("%r%s", self, " (SCALEML_DISABLE=1: Allreduce is MPI_Allreduce)" if config.DISABLE else "")

    def __getattr__(self, name: str) -> Any:
        # A Comm that mpi4py made without __init__ (``Comm.f2py``, ``Comm.fromhandle``,
        # ``Comm.Create_from_group``): the default settings, its engine state made at first use.
        if name in ("_comm", "_engine", "_format", "min_count", "algorithm", "compression", "last_info",
                    "_mpi_fast", "_iallreduce_routes", "_iallreduce_fast", "_ranks_per_node") \
                and "_comm" not in self.__dict__:
            Comm.__init__(self, MPI.Intracomm(self), _lazy_state=True)
            return getattr(self, name)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    @property
    def _state(self):
        if self._engine is None:  # only after Idup, whose communicator exists once its request completed
            self._engine = engine_state(self._comm, self._ranks_per_node)
        return self._engine

    @property
    def mpi_comm(self) -> MPI.Intracomm:
        """The wrapped communicator as a plain mpi4py ``Intracomm`` (the same handle)."""
        return self._comm

    def __hash__(self) -> int:
        return hash((Comm, self.py2f()))

    def __repr__(self) -> str:
        lossy = f", compression={self.compression!r}" if self.compression is not None else ""
        return f"scaleml.Comm({self._comm!r}, min_count={self.min_count}, algorithm={self.algorithm!r}{lossy})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as mpi4py pickles its communicators (``reduce_default``).

        Only communicators over a predefined handle (``COMM_WORLD``,
        ``COMM_SELF``, ``COMM_NULL``) pickle; any other raises mpi4py's
        ``ValueError``. As mpi4py's predefined objects unpickle to themselves,
        a Comm over ``COMM_WORLD`` or ``COMM_SELF`` unpickles to the Comm of
        its class and settings over that handle that this process pickled or
        unpickled first, while it is alive (``loads(dumps(comm)) is comm``),
        else to a new one, made without a collective (its engine state comes
        at its first ScaleML collective, as after ``Idup``). A freed Comm
        unpickles to an object of its class over ``COMM_NULL``, as mpi4py's.
        """
        _, (_, predefined) = super().__reduce__()  # mpi4py's ValueError for a handle that is not predefined
        name = predefined.__reduce__()  # mpi4py's name of the handle: "COMM_WORLD", "COMM_SELF", "COMM_NULL"
        if name != "COMM_NULL":
            _PICKLED.setdefault(self._pickle_key(name), self)
        settings = {"min_count": self.min_count, "algorithm": self.algorithm,
                    "compression": "none" if self.compression is None else self.compression}
        return _unpickle_comm, (name, type(self), settings)

    def _pickle_key(self, name: str) -> tuple[Any, ...]:
        return name, type(self), self.min_count, self.algorithm, self._codec_fingerprint()

    # Communicator constructors return wrapped communicators, so code that splits keeps the engine.
    def _wrap(self, comm: MPI.Comm, lazy: bool = False) -> Any:
        if comm == MPI.COMM_NULL:
            return MPI.COMM_NULL
        # an exact communicator's copies stay exact, whatever SCALEML_COMPRESSION says
        return Comm(comm, min_count=self.min_count, algorithm=self.algorithm, _lazy_state=lazy,
                    compression="none" if self.compression is None else self.compression)

    def Dup(self, info: MPI.Info | None = None) -> Comm:  # noqa: N802 (mpi4py's name)
        """Duplicate the communicator (``MPI_Comm_dup``); returns a :class:`Comm`."""
        return self._wrap(self._comm.Dup() if info is None else self._comm.Dup(info))

    def Dup_with_info(self, info: MPI.Info) -> Comm:  # noqa: N802
        """Duplicate with new info hints (``MPI_Comm_dup_with_info``); returns a :class:`Comm`."""
        return self._wrap(self._comm.Dup_with_info(info))

    def Clone(self) -> Comm:  # noqa: N802
        """Clone the communicator (``MPI_Comm_dup``); returns a :class:`Comm`."""
        return self._wrap(self._comm.Clone())

    def Idup(self, info: MPI.Info | None = None) -> tuple[Comm, MPI.Request]:  # noqa: N802
        """Nonblocking duplicate (``MPI_Comm_idup``): ``(Comm, request)``; use the Comm once the request completed.

        Its engine state (a private duplicate) is made at its first ScaleML
        collective, which every rank reaches in the same order.
        """
        comm, request = self._comm.Idup() if info is None else self._comm.Idup(info)
        return self._wrap(comm, lazy=True), request

    def Idup_with_info(self, info: MPI.Info) -> tuple[Comm, MPI.Request]:  # noqa: N802
        """Nonblocking duplicate with info hints; as :meth:`Idup`."""
        comm, request = self._comm.Idup_with_info(info)
        return self._wrap(comm, lazy=True), request

    @classmethod
    def Create_from_group(cls, group: MPI.Group, stringtag: str = "org.mpi4py", info: MPI.Info = MPI.INFO_NULL,
                          errhandler: MPI.Errhandler | None = None) -> Comm:  # noqa: N802
        """A communicator of ``group`` (``MPI_Comm_create_from_group``, collective over it); a :class:`Comm`."""
        comm = MPI.Intracomm.Create_from_group(group, stringtag, info, errhandler)
        return MPI.COMM_NULL if comm == MPI.COMM_NULL else cls(comm)

    def Split(self, color: int = 0, key: int = 0) -> Comm:  # noqa: N802
        """Split the communicator (``MPI_Comm_split``); returns a :class:`Comm` (``COMM_NULL`` if undefined)."""
        return self._wrap(self._comm.Split(color, key))

    def Split_type(self, split_type: int, key: int = 0, info: MPI.Info = MPI.INFO_NULL) -> Comm:  # noqa: N802
        """Split by type (``MPI_Comm_split_type``, e.g. ``MPI.COMM_TYPE_SHARED``); returns a :class:`Comm`."""
        return self._wrap(self._comm.Split_type(split_type, key, info))

    def Create(self, group: MPI.Group) -> Comm:  # noqa: N802
        """A communicator of ``group`` (``MPI_Comm_create``); returns a :class:`Comm` (``COMM_NULL`` outside)."""
        return self._wrap(self._comm.Create(group))

    def Create_group(self, group: MPI.Group, tag: int = 0) -> Comm:  # noqa: N802
        """A communicator of ``group``, collective over it (``MPI_Comm_create_group``); a :class:`Comm`."""
        return self._wrap(self._comm.Create_group(group, tag))

    def Iallreduce(self, sendbuf: Any, recvbuf: Any, op: MPI.Op = MPI.SUM) -> Any:  # noqa: N802
        """Nonblocking :meth:`Allreduce` (collective): returns a request at once.

        Calls the engine may take run as :meth:`Allreduce` on a progress
        thread, on a private duplicate of this communicator (made at the
        first call, collectively), and return a
        :class:`scaleml.nonblocking.Request` (``Wait``, ``Test``; its
        ``result()`` is the call's :class:`AllreduceInfo`, ``None`` when MPI
        ran). In a size class below ``SCALEML_IALLREDUCE_THREAD_BYTES`` (4
        MiB) where the engine chose MPI, the calls are ``MPI_Iallreduce`` on
        the caller's buffers for a period, returning a request with the same
        methods that completes when waited for or tested (see
        :mod:`scaleml.nonblocking`). Every other call is mpi4py's
        ``Iallreduce`` and returns its ``MPI.Request``. Rules as for MPI's
        nonblocking collectives: every
        rank starts the same calls in the same order, and the buffers belong
        to the call until it completes. :func:`scaleml.nonblocking.waitall`
        waits for both kinds.
        """
        # Below min_count, and the steady state of a class that MPI won, with plain arrays, in a few attribute
        # reads: MPI_Iallreduce (what mpi4py's call costs). Below min_count it is mpi4py's own call and request
        # (MPI.Request.Waitall works on it); in an MPI period a buffer mpi4py refuses is this rank's error,
        # which joins the others' MPI_Iallreduce with NaN at index 0 (see _mpi_iallreduce).
        if type(recvbuf) is np.ndarray:
            n = recvbuf.size
            if n < self.min_count:
                if _log.ON:
                    return _log.mpi(self, "below min_count", self._comm.Iallreduce, sendbuf, recvbuf, op)
                return self._comm.Iallreduce(sendbuf, recvbuf, op)
            routes = self._iallreduce_fast.get(n)
            dtype = recvbuf.dtype
            if routes is not None and routes.dtype is dtype and routes.calls < routes.mpi_until \
                    and op is _SUM and not _log.ON:
                routes.calls += 1  # IallreduceRoutes.next() without a decision to make
                checks = routes.checks
                # the request made and started in C where the buffers are plain
                if _iallreduce_request is not None:
                    request = _iallreduce_request(MPIRequest, checks, self._comm, sendbuf, recvbuf)
                    if request is not None:
                        return request
                try:  # else mpi4py's call, which refuses bad buffers
                    return checks.start(self._comm, sendbuf, recvbuf, op, recvbuf, None)
                except (BufferError, ValueError, TypeError) as exc:
                    return self._mpi_iallreduce(checks, sendbuf, recvbuf, op, dtype, n, refused=exc)
        return self._planned_iallreduce(sendbuf, recvbuf, op)

    def _planned_iallreduce(self, sendbuf: Any, recvbuf: Any, op: MPI.Op) -> Any:
        """:meth:`Iallreduce` beyond its fast path (no closure there, see :meth:`_planned_allreduce`): device
        buffers, the plan, then MPI or the progress thread."""
        if _device.is_device(_spec_buffer(recvbuf)) or _device.is_device(_spec_buffer(sendbuf)):
            return self._device_iallreduce(sendbuf, recvbuf, op)
        plan = self._plan(sendbuf, recvbuf, op)
        if plan is None:
            if _log.ON:  # logged as the blocking call's route (the timeline shows the start only)
                return _log.mpi(self, None, self._comm.Iallreduce, sendbuf, recvbuf, op)
            return self._comm.Iallreduce(sendbuf, recvbuf, op)
        dtype, n = plan
        chan = channel(self, duplicate=self.Dup)
        worker = self._worker(chan)
        recheck = False
        routes = self._iallreduce_routes.get((n, dtype))  # once made, a class keeps them (as the fast path does)
        if routes is None and self.algorithm == "auto" and 0 < n * dtype.itemsize < nonblocking.IALLREDUCE_THREAD_BYTES:
            routes = self._iallreduce_routes[n, dtype] = self._iallreduce_fast[n] = IallreduceRoutes(dtype)
        if routes is not None:
            use_mpi, recheck = routes.next()
            if use_mpi:
                if routes.checks is None:  # collective: the same call on every rank
                    routes.checks = chan.mpi_checks(self._comm, self._codec_fingerprint())
                if _log.ON:
                    return _log.mpi(self, "the engine lost to MPI in this class at its last nonblocking check",
                                    lambda s, r, o: self._mpi_iallreduce(routes.checks, s, r, o, dtype, n),
                                    sendbuf, recvbuf, op)
                return self._mpi_iallreduce(routes.checks, sendbuf, recvbuf, op, dtype, n)

        times: list[float | None] = []

        def allreduce() -> AllreduceInfo | None:
            if recheck:  # after a period on MPI: the engine's agreement decides again, not its own MPI period
                worker._end_mpi_period(n, dtype)
            worker.Allreduce(sendbuf, recvbuf, op)
            info = worker.last_info
            if routes is not None:  # read here, in issue order: the same agreed values on every rank
                stats = worker._class_stats(n, dtype)
                engine = None
                if info is not None and info.algorithm in info.predicted:
                    engine = stats.estimate(info.algorithm, info.predicted[info.algorithm])
                times.extend((stats.mpi_seconds, engine))
            return info

        request = Request("Iallreduce")
        chan.submit(request, allreduce)
        if routes is not None:
            routes.started(request, times)
        return request

    def _device_iallreduce(self, sendbuf: Any, recvbuf: Any, op: Any) -> Any:
        """:meth:`Iallreduce` of CUDA arrays: staged to host now (on the caller's stream), then the host
        Allreduce and the copy back on the progress thread, as :meth:`_device_allreduce` does in one go."""
        if self._plan_device(sendbuf, recvbuf, op) is None and cuda_aware_mpi():
            return self._comm.Iallreduce(sendbuf, recvbuf, op)
        staged = self._stage_device(sendbuf, recvbuf, op)
        chan = channel(self, duplicate=self.Dup)
        worker = self._worker(chan)

        def allreduce() -> AllreduceInfo | None:
            if isinstance(staged, Exception):
                worker._join_device_failure(sendbuf, recvbuf, op, staged)
            host_send, host_recv, recv = staged
            worker.Allreduce(host_send, host_recv, op)
            _device.from_host(host_recv, recv)
            return worker.last_info

        request = Request("Iallreduce")
        chan.submit(request, allreduce)
        return request

    def _mpi_iallreduce(self, checks, sendbuf: Any, recvbuf: Any, op: Any, dtype: np.dtype, n: int,
                        refused: Exception | None = None) -> Request:
        """MPI_Iallreduce on the caller's buffers, as :meth:`_mpi_allreduce` (a bad buffer joins with NaN);
        ``refused``: mpi4py refused these buffers (this rank's error even where :meth:`_buffers` finds none)."""
        try:
            _check_op(op)
            _, recv = self._buffers(sendbuf, recvbuf, dtype, n)
            if refused is not None:
                raise LocalError(6, refused) if isinstance(refused, BufferError) else as_local_error(refused)
            error = None
        except LocalError as exc:
            error = exc
            recv = np.zeros(n, dtype)
            recv[0] = np.nan
            sendbuf, recvbuf, op = MPI.IN_PLACE, recv, MPI.SUM
        return checks.start(self._comm, sendbuf, recvbuf, op, recv, error)

    def _worker(self, chan) -> Comm:
        """The Comm with this one's settings over the channel's private communicator (the channel belongs
        to the MPI communicator, which Comms with other settings may wrap too)."""
        key = (self.min_count, self.algorithm, self._codec_fingerprint())
        worker = chan.workers.get(key)
        if worker is None:  # no collective: the private communicator's engine state exists (channel())
            private = chan.comm.mpi_comm if isinstance(chan.comm, Comm) else chan.comm
            worker = chan.workers[key] = Comm(private, min_count=self.min_count, algorithm=self.algorithm,
                                              compression=self.compression)
        return worker

    def _class_stats(self, n: int, dtype: np.dtype) -> Any:
        """The tuner's statistics of the drop-in's size class of ``n`` values of ``dtype``."""
        return self._state.tuner.stats("Allreduce", dtype.itemsize, n, self._codec_fingerprint())

    def _end_mpi_period(self, n: int, dtype: np.dtype) -> None:
        """Make the next Allreduce of (n, dtype) an agreement (the tuner re-checks), not an MPI-period call."""
        stats = self._class_stats(n, dtype)
        if stats.calls < stats.mpi_until:
            stats.mpi_until = stats.calls

    def Allreduce(self, sendbuf: Any, recvbuf: Any, op: MPI.Op = MPI.SUM) -> None:  # noqa: N802
        """Combine values from all processes and distribute the result to all (collective).

        Same arguments and result as ``mpi4py.MPI.Comm.Allreduce``; see the
        class docstring for when the sparse engine takes over. CUDA arrays
        (CuPy, CUDA tensors) are taken too, staged through host memory onto
        the same path (see ``docs/gpu.md``).
        """
        self.last_info = None
        # The steady state of a size class that MPI won, with plain arrays, in a few attribute reads.
        if type(recvbuf) is np.ndarray:
            n = recvbuf.size
            dtype = recvbuf.dtype
            if n < self.min_count:  # below the engine's threshold: MPI, and nothing else on the way
                if op is _SUM and (dtype is _FLOAT32 or dtype is _FLOAT64):  # a bad buffer joins with NaN
                    if _log.ON:  # INFO logging or a timeline: the one check of this path
                        return self._logged_mpi_sum(sendbuf, recvbuf, op, n, dtype)
                    return self._mpi_sum(sendbuf, recvbuf, n, dtype)
                if isinstance(op, MPI.Op):  # other ops and dtypes: mpi4py's own call
                    if _log.ON:
                        return _log.mpi(self, "below min_count", self._comm.Allreduce, sendbuf, recvbuf, op)
                    return self._comm.Allreduce(sendbuf, recvbuf, op)
                # an op that is no MPI.Op: planned below as a SUM, so that this rank joins the others and fails
            stats = self._mpi_fast.get(n)
            if stats is not None and stats.dtype is dtype and op is _SUM and not _log.ON:
                if stats.mpi_until - stats.calls > _TIMED_CALLS:  # the tuner's MPI period, untimed
                    stats.calls += 1
                    return self._mpi_sum(sendbuf, recvbuf, n, dtype)
        return self._planned_allreduce(sendbuf, recvbuf, op)

    # The fast paths above hold no closure: a variable that a nested function reads is a cell in every call
    # (about 0.25 us more per call on 3.11), so the calls that plan, and the logged ones, are methods of their own.
    def _logged_mpi_sum(self, sendbuf: Any, recvbuf: np.ndarray, op: MPI.Op, n: int, dtype: np.dtype) -> None:
        """:meth:`_mpi_sum` below ``min_count``, logged and on the timeline."""
        return _log.mpi(self, "below min_count", lambda s, r, o: self._mpi_sum(s, r, n, dtype), sendbuf, recvbuf, op)

    def _planned_allreduce(self, sendbuf: Any, recvbuf: Any, op: MPI.Op) -> None:
        """:meth:`Allreduce` beyond its fast paths: device buffers, the plan, the engine or MPI."""
        if _device.is_device(_spec_buffer(recvbuf)) or _device.is_device(_spec_buffer(sendbuf)):
            return self._device_allreduce(sendbuf, recvbuf, op)
        plan = self._sum_plan(sendbuf, recvbuf, op)
        if plan is None or plan[1] < self.min_count:
            if plan is None:
                mpi_allreduce = self._comm.Allreduce
            else:  # a float SUM below min_count: a bad buffer joins with NaN, as in an MPI period
                dtype, n = plan
                mpi_allreduce = lambda s, r, o: self._mpi_allreduce(None, s, r, o, dtype, n)  # noqa: E731
            if _log.ON:
                return _log.mpi(self, None, mpi_allreduce, sendbuf, recvbuf, op)
            return mpi_allreduce(sendbuf, recvbuf, op)
        dtype, n = plan
        stats = self._class_stats(n, dtype)
        if n and self.algorithm == "auto":
            stats.dtype = dtype
            self._mpi_fast[n] = stats
            if stats.calls < stats.mpi_until:  # an MPI period of the tuner: no agreement
                stats.calls += 1
                if _log.ON:
                    return _log.mpi(self, None, lambda s, r, o: self._mpi_allreduce(stats, s, r, o, dtype, n),
                                    sendbuf, recvbuf, op, stats=stats)
                return self._mpi_allreduce(stats, sendbuf, recvbuf, op, dtype, n)
        self._engine_allreduce(sendbuf, recvbuf, op, dtype, n)
        return None

    def _mpi_sum(self, sendbuf: Any, recvbuf: np.ndarray, n: int, dtype: np.dtype) -> None:
        """MPI_Allreduce(SUM) of a float32/float64 array with no agreement (the tuner's MPI period, calls below
        ``min_count``), in the fewest steps: from C where the buffers are plain, else through mpi4py, which
        checks them (layout, writable, the send buffer's datatype and count against the receive buffer's). A
        buffer it refuses is this rank's error, which joins the others' MPI_Allreduce with NaN at index 0
        (see :meth:`_mpi_allreduce`)."""
        nan_first = None if _allreduce_sum is None else _allreduce_sum(self._comm, sendbuf, recvbuf)
        if nan_first is None:
            try:
                self._comm.Allreduce(sendbuf, recvbuf, _SUM)
            except (BufferError, ValueError, TypeError) as exc:
                self._join_failed(self._refused(sendbuf, recvbuf, exc), n, dtype)
            nan_first = n > 0 and recvbuf.item(0) != recvbuf.item(0)
        if nan_first:  # NaN at index 0: a rank may have failed
            self._agree_on_nan(recvbuf)

    def _device_allreduce(self, sendbuf: Any, recvbuf: Any, op: Any) -> None:
        """Allreduce of CUDA arrays: the host path on staged copies, so every rank plans alike whatever memory
        its buffers are in, and the result is bitwise the host path's.

        The arrays are copied to host memory on their stream (after the kernels queued before the call), the
        call runs as it would on those copies (the engine, or MPI), and the sum is copied back. Where the MPI
        is CUDA-aware and the call goes to MPI as a whole (not float data, below ``min_count``, an op other
        than SUM, ``SCALEML_DISABLE``), the device buffers go to MPI as they are. A rank that cannot stage
        its buffers (no CUDA library, different devices, a CUDA failure) joins the others' call with
        poisoned data and raises through the agreement, as a bad host buffer does.
        """
        if self._plan_device(sendbuf, recvbuf, op) is None and cuda_aware_mpi():
            return self._comm.Allreduce(sendbuf, recvbuf, op)
        staged = self._stage_device(sendbuf, recvbuf, op)
        if isinstance(staged, Exception):
            self._join_device_failure(sendbuf, recvbuf, op, staged)
            raise AssertionError("unreachable: the failure raises") from staged  # pragma: no cover
        host_send, host_recv, recv = staged
        self.Allreduce(host_send, host_recv, op)
        _device.from_host(host_recv, recv)
        return None

    def _stage_device(self, sendbuf: Any, recvbuf: Any, op: Any) -> tuple[Any, np.ndarray, Any] | Exception:
        """(host send buffer or IN_PLACE, host receive buffer, the device receive view): copies made on the
        arrays' streams, on the calling thread (the caller's current stream); or this rank's error."""
        try:
            recv = _device_spec(recvbuf, "recvbuf")
            send = None if sendbuf is MPI.IN_PLACE or sendbuf is None else _device_spec(sendbuf, "sendbuf")
            _device.same_device([v for v in (recv, send) if v is not None], "Allreduce")
            host_recv = _device.to_host(recv) if send is None else np.empty(recv.shape, recv.dtype)
            host_send = MPI.IN_PLACE if send is None else _device.to_host(send)
        except Exception as exc:  # noqa: BLE001 - any failure of this rank joins the others' call
            return exc
        return host_send, host_recv, recv

    def _plan_device(self, sendbuf: Any, recvbuf: Any, op: Any) -> tuple[np.dtype, int] | None:
        """:meth:`_plan` for CUDA buffers, from their interfaces alone (the same decision as for host ones)."""
        if config.DISABLE or (isinstance(op, MPI.Op) and op != MPI.SUM):
            return None
        for spec in (recvbuf, sendbuf):
            buf = _spec_buffer(spec)
            described = _device.describe(buf) if _device.is_device(buf) else _float_plan(spec)
            if described is not None and described[0] in _NUMPY_FLOATS:
                return described if described[1] >= self.min_count else None
        return None

    def _join_device_failure(self, sendbuf: Any, recvbuf: Any, op: Any, exc: Exception) -> None:
        """This rank could not stage its CUDA buffers: take the others' route with a bad buffer of the planned
        size, so it joins their call (poisoned where MPI runs) and every rank raises ``exc``'s error."""
        plan = self._plan_device(sendbuf, recvbuf, op)
        if plan is None:  # MPI as a whole, as mpi4py would: this rank's own error
            raise exc
        dtype, n = plan
        error = as_local_error(exc)
        stats = self._class_stats(n, dtype)
        if n and self.algorithm == "auto" and stats.calls < stats.mpi_until:
            stats.calls += 1
            self._join_failed(error, n, dtype)

        def prepare(state: EngineState) -> Call:
            raise error

        collective(self._comm, "Allreduce", prepare, size_class=(dtype.itemsize, n, self._codec_fingerprint()))

    def _mpi_allreduce(self, stats, sendbuf: Any, recvbuf: Any, op: Any, dtype: np.dtype, n: int) -> None:
        """MPI won this size class at its last check (``stats``: its statistics; None: a call below
        ``min_count``): MPI_Allreduce with no agreement (see scaleml.tuner).

        A rank whose buffers are bad still joins the MPI_Allreduce, with NaN at
        index 0, then raises through the agreement. Every rank's sum then holds
        NaN at index 0, and ranks that see it join the agreement too: they
        raise with it, or, when no rank failed, the NaN was the data's and the
        result stands as MPI's. The check costs one element, not a scan.
        """
        try:
            _check_op(op)
            _, recv = self._buffers(sendbuf, recvbuf, dtype, n)
        except LocalError as exc:
            self._join_failed(exc, n, dtype)
        self._mpi_call(stats, sendbuf, recvbuf, op, recv)

    def _refused(self, sendbuf: Any, recvbuf: np.ndarray, exc: Exception) -> LocalError:
        """The local error of buffers mpi4py refused: :meth:`_buffers`'s own, else mpi4py's exception."""
        try:
            self._buffers(sendbuf, recvbuf, recvbuf.dtype, recvbuf.size)
        except LocalError as error:
            return error
        return LocalError(6, exc) if isinstance(exc, BufferError) else as_local_error(exc)

    def _join_failed(self, error: LocalError, n: int, dtype: np.dtype) -> None:
        """This rank's buffers are bad in a call that MPI runs with no agreement: join the MPI_Allreduce the
        others are in (a bad buffer must not leave them waiting) with NaN at index 0, then raise ``error``
        through the agreement (at n = 0 there is no index 0 to tell them: this rank raises alone)."""
        # A sum, as theirs is (only a SUM, or an op that is no op at all, is planned for the engine).
        poison = np.zeros(n, dtype)
        if n:
            poison[0] = np.nan
        self._comm.Allreduce(MPI.IN_PLACE, poison, MPI.SUM)
        if not n:
            raise error.exc
        # The engine state after the sum: made at first use (a collective), it must not pair with their sum.
        agree(self._state, error, n=n, value_bytes=dtype.itemsize, algorithm=0, out=0, nnz=0, op_name="Allreduce",
              codec=self._codec_fingerprint())
        raise AssertionError("unreachable: the agreement raises this rank's error") from error  # pragma: no cover

    def _mpi_call(self, stats, sendbuf: Any, recvbuf: Any, op: MPI.Op, recv: np.ndarray) -> None:
        """MPI_Allreduce in an MPI period, timed on the calls whose times the next check reports (``stats``
        None: below ``min_count``, untimed); NaN at index 0 of the sum (a rank may have failed) leads every
        rank into the agreement."""
        if stats is not None and stats.mpi_until - stats.calls < _TIMED_CALLS:
            t0 = time.perf_counter()
            self._comm.Allreduce(sendbuf, recvbuf, op)  # the caller's buffers, on the caller's communicator
            stats.record_mpi(time.perf_counter() - t0)
        else:
            self._comm.Allreduce(sendbuf, recvbuf, op)
        if recv.size and recv.item(0) != recv.item(0):
            self._agree_on_nan(recv)

    def _agree_on_nan(self, recv: np.ndarray) -> None:
        """The MPI period's check: NaN at index 0 of the sum leads every rank into the agreement (it raises
        where a rank failed; otherwise the NaN was the data's and MPI's result stands)."""
        agree(self._state, None, n=recv.size, value_bytes=recv.itemsize, algorithm=0, out=0, nnz=0,
              op_name="Allreduce", codec=self._codec_fingerprint())

    def _codec_fingerprint(self) -> int:
        return self._format.fingerprint if self._format is not None else 0

    def _buffers(self, sendbuf: Any, recvbuf: Any, dtype: np.dtype, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(send, recv) as float arrays of n elements without copies; local errors as LocalError."""
        # The common case, plain contiguous arrays, in a few attribute reads: this runs on every call.
        if type(recvbuf) is np.ndarray and recvbuf.dtype == dtype and recvbuf.size == n \
                and recvbuf.flags.c_contiguous and recvbuf.flags.writeable:
            recv = recvbuf.reshape(-1)
            if sendbuf is MPI.IN_PLACE or sendbuf is None:
                return recv, recv
            if type(sendbuf) is np.ndarray and sendbuf.dtype == dtype and sendbuf.size == n \
                    and sendbuf.flags.c_contiguous:
                return sendbuf.reshape(-1), recv
        try:
            rbuf, _, rcount, rdispl = _parse_spec(recvbuf)
        except _Unsupported:  # planned from the send buffer: this rank's receive buffer is the odd one
            raise LocalError(1, TypeError("Allreduce: receive buffer is not float32/float64 data like "
                                           "the send buffer")) from None
        _element_count(rbuf, dtype, rcount, exact=True)  # a length mpi4py cannot infer a count from: its error
        recv = _as_array(rbuf, dtype, n, rdispl, writable=True)
        if sendbuf is MPI.IN_PLACE or sendbuf is None:
            return recv, recv
        try:
            sbuf, sdtype, scount, sdispl = _parse_spec(sendbuf)
        except _Unsupported:
            raise LocalError(1, TypeError("Allreduce: send buffer is not float32/float64 data like "
                                           "the receive buffer")) from None
        if sdtype != dtype:
            raise LocalError(1, TypeError(f"Allreduce: send dtype {sdtype} differs from receive "
                                           f"dtype {dtype}"))
        scount = _element_count(sbuf, sdtype, scount, exact=True)
        if scount != n:
            raise LocalError(2, ValueError(f"Allreduce: send count {scount} differs from receive "
                                            f"count {n}"))
        return _as_array(sbuf, dtype, n, sdispl, writable=False), recv

    def _plan(self, sendbuf: Any, recvbuf: Any, op: MPI.Op) -> tuple[np.dtype, int] | None:
        """(dtype, count) when the engine may take this call, else None: a float SUM (:meth:`_sum_plan`) of
        at least ``min_count`` values."""
        plan = self._sum_plan(sendbuf, recvbuf, op)
        return plan if plan is not None and plan[1] >= self.min_count else None

    def _sum_plan(self, sendbuf: Any, recvbuf: Any, op: Any) -> tuple[np.dtype, int] | None:
        """(dtype, count) of a float32/float64 SUM, whatever its count; None: a call for MPI as a whole.

        Decided only from what MPI requires to match across ranks (op, datatype,
        count, IN_PLACE), so every rank makes the same decision. A rank whose
        op is not an ``MPI.Op``, or whose receive buffer cannot be read, plans
        from its send buffer: it then goes where the other ranks' calls of
        that size go and raises with them (never leaving them waiting).
        """
        if config.DISABLE or (isinstance(op, MPI.Op) and op != MPI.SUM):
            return None
        plan = _float_plan(recvbuf)
        if plan is None and sendbuf is not MPI.IN_PLACE:
            plan = _float_plan(sendbuf)
        return plan

    def _mpi_reason(self, sendbuf: Any, recvbuf: Any, op: Any) -> str:
        """Why :meth:`_plan` sent a call to MPI, for the log (``_log.mpi`` asks only when it logs it)."""
        if config.DISABLE:
            return "SCALEML_DISABLE=1"
        if isinstance(op, MPI.Op) and op != MPI.SUM:
            return f"op {_log.op_name(op)} (the engine takes MPI.SUM)"
        plan = self._sum_plan(sendbuf, recvbuf, op)
        if plan is None:
            return "not float32/float64 data"
        return f"count {plan[1]} < min_count {self.min_count}"

    def _engine_allreduce(self, sendbuf: Any, recvbuf: Any, op: MPI.Op, dtype: np.dtype, n: int) -> None:
        """The engine's call path; its preparation: the caller's buffers and their non-zeros. Where the plan
        says MPI, MPI_Allreduce runs on the caller's buffers (no copies)."""

        def prepare(state: EngineState) -> Call:
            _check_op(op)
            send, recv = self._buffers(sendbuf, recvbuf, dtype, n)
            nnz, negative_zeros, nonzeros = scan_nonzeros(send, self._scan_capacity.get(n, n // _FIRST_SHARE),
                                                          index_dtype(n), self._scan_scratch)
            # Dense data fills the capacity and then only counts: keep those wasted stores few for this size.
            self._scan_capacity[n] = n // (_SPARSE_SHARE if nnz <= n // _SPARSE_SHARE else _DENSE_SHARE)
            return Call(n, send, requested=self.algorithm, dense_out=recv, fmt=self._format, nnz=nnz,
                        nonzeros=nonzeros, negative_zero=negative_zeros > 0,
                        mpi_allreduce=lambda: self._comm.Allreduce(sendbuf, recvbuf, op))

        _, _, self.last_info = collective(self._comm, "Allreduce", prepare,
                                          size_class=(dtype.itemsize, n, self._codec_fingerprint()))
