"""Error feedback: named per-tensor residuals around any compressor, with saved and loaded state."""

from __future__ import annotations

import os

import numpy as np

from .base import ArrayLike, Compressor, _as_input
from .framing import DTYPE_CODES, Compressed


class ErrorFeedback:
    """Error feedback around a compressor: named residuals, compensate -> compress -> update.

    For a tensor ``name`` and gradient ``g``: ``y = g + residual[name]``
    (compensate), ``c = compress(y)``, ``residual[name] = y - decode(c)``
    (update); ``c`` is returned. The state (every residual and the
    compressor's step counter) can be saved and loaded, so a checkpointed run
    resumes with the same residuals and random streams.

    Parameters
    ----------
    compressor : Compressor
        Any compressor of this module.
    """

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor
        self._residuals: dict[str, np.ndarray] = {}

    def compress(self, name: str, grad: ArrayLike, *, step: int | None = None) -> Compressed:
        """Compensate ``grad`` with the residual of ``name``, compress, and keep the new residual."""
        g = _as_input(grad, "grad")
        r = self._residuals.get(name)
        if r is not None and (r.shape != g.shape or r.dtype != g.dtype):
            raise ValueError(f"tensor {name!r}: got {g.dtype}{g.shape}, residual is {r.dtype}{r.shape}")
        y = g + r if r is not None else g
        c, res = self.compressor.encode_with_residual(y, step=step)
        self._residuals[name] = res
        return c

    def residual(self, name: str) -> np.ndarray | None:
        """The current residual of ``name`` (``None`` before its first step)."""
        return self._residuals.get(name)

    def residual_buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The residual of ``name`` to update in place (zeros on first use), for collectives that keep their
        error feedback in C (:func:`scaleml.quantized_allreduce`). ``ValueError`` when an existing residual
        has another shape or dtype (a different tensor, or a different number of ranks)."""
        r = self._residuals.get(name)
        if r is None:
            r = self._residuals[name] = np.zeros(shape, dtype=dtype)
        elif r.shape != tuple(shape) or r.dtype != dtype or not r.flags.c_contiguous or not r.flags.writeable:
            raise ValueError(f"residual {name!r} is {r.dtype}{r.shape}, this call needs "
                             f"{np.dtype(dtype)}{tuple(shape)} (another tensor under the same name, or another "
                             "number of ranks?)")
        return r

    def set_residual(self, name: str, residual: ArrayLike | None) -> None:
        """Replace the residual of ``name`` (``None`` drops it).

        For callers that compress first and keep the new residual only once
        the collective that sends the compressed tensor has succeeded
        (``scaleml.topk_allreduce``).

        Parameters
        ----------
        name : str
            The tensor's name.
        residual : array_like of float32 or float64, or None
            The new residual (copied when not a C-contiguous array already).
        """
        if residual is None:
            self._residuals.pop(name, None)
        else:
            self._residuals[name] = _as_input(residual, "residual")

    def names(self) -> list[str]:
        """Names of the tensors with a residual."""
        return sorted(self._residuals)

    def reset(self, name: str | None = None) -> None:
        """Drop the residual of ``name`` (all residuals when ``None``)."""
        if name is None:
            self._residuals.clear()
        else:
            self._residuals.pop(name, None)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every residual (keys ``residual/<name>``) and ``step`` (the compressor's counter)."""
        state = {f"residual/{k}": v.copy() for k, v in self._residuals.items()}
        state["step"] = np.array(self.compressor.step, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned."""
        residuals = {}
        for k, v in state.items():
            if k.startswith("residual/"):
                a = np.array(v, copy=True)
                if a.dtype not in DTYPE_CODES:
                    raise TypeError(f"residual {k!r} has dtype {a.dtype}")
                residuals[k[len("residual/"):]] = a
            elif k != "step":
                raise ValueError(f"unexpected key {k!r} in error feedback state")
        self._residuals = residuals
        if "step" in state:
            self.compressor.step = int(np.asarray(state["step"]))

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to an ``.npz`` file."""
        np.savez(path, **self.state_dict())

    def load(self, path: str | os.PathLike) -> None:
        """Read the state written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            self.load_state_dict({k: f[k] for k in f.files})
