"""The exceptions of ScaleML and the one table that maps the C core's return codes to them.

The C codes are defined in ``csrc/core/errors.h``; :func:`check` turns a
non-zero code into the exception of :data:`EXCEPTIONS` carrying the C core's
message (``scaleml_error_message``).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ERR_ARG", "ERR_DEVICE", "ERR_MALFORMED", "ERR_MPI", "ERR_NOMEM", "ERR_TOO_LARGE", "EXCEPTIONS", "OK",
           "BufferLayoutError", "CorruptBufferError", "DeviceError", "MalformedMessageError", "ScaleMLError", "check",
           "error_for"]


class ScaleMLError(RuntimeError):
    """An MPI or internal failure inside a ScaleML collective."""


class MalformedMessageError(ScaleMLError):
    """A received message did not match the wire format (corrupt or foreign data)."""


class CorruptBufferError(MalformedMessageError, ValueError):
    """A message or compressed buffer failed validation (truncated, corrupted or foreign data).

    It is what the C core's ``SCALEML_ERR_MALFORMED`` raises: a
    :class:`MalformedMessageError` and, since the bytes a caller passed are a
    bad value, a ``ValueError``.
    """


class DeviceError(ScaleMLError):
    """A CUDA failure or a device buffer ScaleML cannot take.

    Raised for a failed CUDA call (``SCALEML_ERR_DEVICE``: no device, a failed
    launch), for device arrays when the CUDA library was not built or no
    device is visible, and for buffers of one call on different devices.
    Device out-of-memory raises ``MemoryError``.
    """


class BufferLayoutError(BufferError, ValueError):
    """A buffer that mpi4py refuses for its layout: not contiguous, or read-only where it must be written.

    ``scaleml.Comm.Allreduce`` raises it where mpi4py's ``Allreduce`` raises a
    ``BufferError`` (so code written for mpi4py catches it); it is also the
    ``ValueError`` ScaleML raised for these buffers before.
    """


# The return codes of csrc/core/errors.h (SCALEML_OK, SCALEML_ERR_*).
OK = 0
ERR_NOMEM = 1       # an allocation failed
ERR_MPI = 2         # an MPI call failed (MPI's own error string)
ERR_MALFORMED = 3   # a message or compressed buffer failed validation
ERR_ARG = 4         # a bad argument or non-finite input
ERR_TOO_LARGE = 5   # an output buffer too small, or a count beyond what MPI takes
ERR_DEVICE = 6      # a CUDA runtime call failed (not out of memory)

#: C return code -> exception class: the one table of the package.
EXCEPTIONS: dict[int, type[Exception]] = {
    ERR_NOMEM: MemoryError,
    ERR_MPI: ScaleMLError,
    ERR_MALFORMED: CorruptBufferError,
    ERR_ARG: ValueError,
    ERR_TOO_LARGE: MemoryError,
    ERR_DEVICE: DeviceError,
}

#: Agreement code -> (exception class, what it means): the errors one rank finds in its own arguments
#: before a collective, which every rank then raises together (``scaleml.sparse.agree``). These
#: codes travel between ranks in the agreement; they are not C return codes.
AGREEMENT_EXCEPTIONS: dict[int, tuple[type[Exception], str]] = {
    1: (TypeError, "unsupported argument type or dtype"),
    2: (ValueError, "invalid argument"),
    3: (ValueError, "index out of range [0, n)"),
    4: (ValueError, "non-finite value (NaN or Inf)"),
    5: (MemoryError, "result does not fit in memory"),
    6: (BufferLayoutError, "buffer not contiguous or not writable"),
    7: (DeviceError, "CUDA arrays refused (no CUDA library or device, mixed devices, a CUDA failure)"),
}


def _no_message() -> str:
    return "(no message: the C core is not loaded)"


_message_source: Callable[[], str] = _no_message


def set_message_source(source: Callable[[], str]) -> None:
    """Register the function that returns the C core's message for its last error.

    :mod:`scaleml._native` registers ``scaleml_error_message`` when it loads
    the C core: this module sits below it and imports nothing of ScaleML.

    Parameters
    ----------
    source : callable
        Returns the message (``str``) of the calling thread's last error.
    """
    global _message_source
    _message_source = source


def error_for(rc: int, message: str) -> Exception:
    """The exception that C return code ``rc`` stands for, carrying ``message``.

    Parameters
    ----------
    rc : int
        A non-zero return code of the C core.
    message : str
        The C core's message for it.

    Returns
    -------
    Exception
        An instance of ``EXCEPTIONS[rc]`` (:class:`ScaleMLError` for an unknown code).
    """
    return EXCEPTIONS.get(rc, ScaleMLError)(message)


def check(rc: int) -> None:
    """Raise the exception that a C return code stands for (nothing for ``SCALEML_OK``).

    Parameters
    ----------
    rc : int
        Return code of a C core function.

    Raises
    ------
    Exception
        ``EXCEPTIONS[rc]`` with the C core's message when ``rc`` is not 0.
    """
    if rc:
        raise error_for(rc, _message_source())
