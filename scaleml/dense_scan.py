"""The dense scan kernels of the drop-in (``csrc/core/dense_scan.c``): count and extract the non-zeros of a
dense float vector in one C pass each, or both in one pass."""

from __future__ import annotations

import numpy as np

from ._native import ffi, lib

__all__ = ["ScanScratch", "count_nonzeros", "count_nonzeros_signed", "extract_nonzeros", "scan_nonzeros"]


def count_nonzeros(x: np.ndarray) -> int:
    """Number of non-zeros of a contiguous float32/float64 vector (NaN counts)."""
    return int(lib.scaleml_count_nonzeros(ffi.from_buffer(x), x.size, x.itemsize))


def count_nonzeros_signed(x: np.ndarray) -> tuple[int, int]:
    """Non-zeros of a contiguous float32/float64 vector (as :func:`count_nonzeros`) and its -0.0 values.

    One C pass (``scaleml_count_nonzeros_signed``); -0.0 is not a non-zero.
    """
    negative_zeros = ffi.new("uint64_t *")
    nnz = lib.scaleml_count_nonzeros_signed(ffi.from_buffer(x), x.size, x.itemsize, negative_zeros)
    return int(nnz), int(negative_zeros[0])


def extract_nonzeros(x: np.ndarray, nnz: int, idx_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions and values of the ``nnz`` non-zeros of ``x`` (one C pass)."""
    idx = np.empty(nnz, idx_dtype)
    vals = np.empty(nnz, x.dtype)
    found = lib.scaleml_extract_nonzeros(ffi.from_buffer(x), x.size, x.itemsize, idx.itemsize,
                                         ffi.from_buffer(idx, require_writable=True),
                                         ffi.from_buffer(vals, require_writable=True), nnz)
    return idx[:found], vals[:found]


class ScanScratch:
    """Memory that :func:`scan_nonzeros` stores into, kept from one call to the next.

    What fresh arrays of n/4 entries per call cost depends on what the allocator did
    with the last call's (given back and faulted in again, or reused): up to half of
    a 16 MB vector's scan. The drop-in keeps one of these per communicator, whose
    calls never overlap. The entries a scan returns are views into it, valid until
    the next scan that uses it.
    """

    __slots__ = ("_bytes",)

    def __init__(self) -> None:
        self._bytes = np.empty(0, np.uint8)

    def arrays(self, capacity: int, idx_dtype: np.dtype, value_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """(positions, values) arrays of ``capacity`` entries over this memory (grown where too small)."""
        # values first, positions at the next multiple of 8: both aligned for their types
        at = -(-capacity * value_dtype.itemsize // 8) * 8
        end = at + capacity * idx_dtype.itemsize
        if self._bytes.size < end:
            self._bytes = np.empty(end, np.uint8)
        return self._bytes[at:end].view(idx_dtype), self._bytes[:capacity * value_dtype.itemsize].view(value_dtype)


def scan_nonzeros(x: np.ndarray, capacity: int, idx_dtype: np.dtype, scratch: ScanScratch | None = None
                  ) -> tuple[int, int, tuple[np.ndarray, np.ndarray] | None]:
    """:func:`count_nonzeros_signed` and, where they fit, :func:`extract_nonzeros`, in one C pass.

    Parameters
    ----------
    x : numpy.ndarray
        Contiguous float32/float64 vector.
    capacity : int
        The most non-zeros to store (the scan stores no more, and counts on).
    idx_dtype : numpy.dtype
        uint32 or uint64: the positions' type.
    scratch : ScanScratch, optional
        Where to store them (the arrays returned are views into it); default new arrays.

    Returns
    -------
    (int, int, tuple or None)
        The non-zeros, the -0.0 values, and (positions, values) of all the
        non-zeros, or None where they did not all fit in ``capacity``.
    """
    capacity = max(int(capacity), 0)
    if scratch is None:
        idx, vals = np.empty(capacity, idx_dtype), np.empty(capacity, x.dtype)
    else:
        idx, vals = scratch.arrays(capacity, idx_dtype, x.dtype)
    negative_zeros = ffi.new("uint64_t *")
    extracted = ffi.new("uint64_t *")
    nnz = int(lib.scaleml_scan_nonzeros(ffi.from_buffer(x), x.size, x.itemsize, idx.itemsize,
                                        ffi.from_buffer(idx, require_writable=True),
                                        ffi.from_buffer(vals, require_writable=True), capacity, negative_zeros,
                                        extracted))
    complete = int(extracted[0]) == nnz
    return nnz, int(negative_zeros[0]), (idx[:nnz], vals[:nnz]) if complete else None
