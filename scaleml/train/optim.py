"""Optimizers that update a list of numpy parameters in place: SGD, SGD with momentum, Adam.

Every update is elementwise arithmetic in the parameters' dtype, in a fixed
order, so ranks that start from the same parameters and apply the same
gradients end with bitwise-identical parameters. The state (momentum, Adam's
moments and step) saves to and loads from a dict of numpy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["OPTIMIZERS", "SGD", "Adam", "Momentum", "Optimizer", "make_optimizer"]


class Optimizer:
    """Base class.

    Parameters
    ----------
    lr : float
        Learning rate (> 0).
    """

    name = "optimizer"

    def __init__(self, lr: float) -> None:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate must be a positive number, got {lr!r}")
        self.lr = float(lr)
        self.step_count = 0
        """Updates applied so far."""

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        """Apply one update to ``params`` (in place) from ``grads`` (same shapes and dtypes)."""
        if len(params) != len(grads):
            raise ValueError(f"{len(params)} parameters but {len(grads)} gradients")
        for p, g in zip(params, grads):
            if p.shape != g.shape:
                raise ValueError(f"parameter of shape {p.shape} got a gradient of shape {g.shape}")
        self._update(params, grads)
        self.step_count += 1

    def _update(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        raise NotImplementedError

    def _slots(self) -> dict[str, list[np.ndarray]]:
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the state: ``step`` and, per slot (``momentum``, ``m``, ``v``), ``<slot>/<i>``."""
        state = {"step": np.array(self.step_count, dtype=np.int64)}
        for slot, arrays in self._slots().items():
            state.update({f"{slot}/{i}": a.copy() for i, a in enumerate(arrays)})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray], params: Sequence[np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned, for the parameters ``params`` (checks shapes)."""
        if "step" not in state:
            raise ValueError("optimizer state has no 'step'")
        slots: dict[str, list[np.ndarray]] = {}
        for slot in self._slot_names():
            arrays = []
            for i, p in enumerate(params):
                a = state.get(f"{slot}/{i}")
                if a is None:
                    if int(np.asarray(state["step"])) == 0:
                        continue
                    raise ValueError(f"optimizer state lacks {slot}/{i}")
                if a.shape != p.shape or a.dtype != p.dtype:
                    raise ValueError(f"optimizer state {slot}/{i} is {a.dtype}{a.shape}, the parameter is "
                                     f"{p.dtype}{p.shape}")
                arrays.append(np.array(a, copy=True))
            if arrays:
                slots[slot] = arrays
        expected = {f"{s}/{i}" for s in slots for i in range(len(params))} | {"step"}
        extra = sorted(set(state) - expected)
        if extra:
            raise ValueError(f"unexpected optimizer state {extra[:3]} for {self.name}")
        self._set_slots(slots)
        self.step_count = int(np.asarray(state["step"]))

    def _slot_names(self) -> tuple[str, ...]:
        return ()

    def _set_slots(self, slots: dict[str, list[np.ndarray]]) -> None:
        pass


class SGD(Optimizer):
    """Plain SGD: ``p -= lr * g``."""

    name = "sgd"

    def _update(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        for p, g in zip(params, grads):
            p -= p.dtype.type(self.lr) * g


class Momentum(Optimizer):
    """SGD with heavy-ball momentum: ``v = mu v + g``, ``p -= lr v``.

    Parameters
    ----------
    lr : float
        Learning rate.
    momentum : float
        ``mu`` in [0, 1).
    """

    name = "momentum"

    def __init__(self, lr: float, momentum: float = 0.9) -> None:
        super().__init__(lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self._v: list[np.ndarray] = []

    def _update(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        if not self._v:
            self._v = [np.zeros_like(p) for p in params]
        for p, g, v in zip(params, grads, self._v):
            v *= p.dtype.type(self.momentum)
            v += g
            p -= p.dtype.type(self.lr) * v

    def _slots(self) -> dict[str, list[np.ndarray]]:
        return {"momentum": self._v} if self._v else {}

    def _slot_names(self) -> tuple[str, ...]:
        return ("momentum",)

    def _set_slots(self, slots: dict[str, list[np.ndarray]]) -> None:
        self._v = slots.get("momentum", [])


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction.

    Parameters
    ----------
    lr : float
        Learning rate.
    betas : tuple of float
        Decay rates of the first and second moments.
    eps : float
        Added to the square root of the second moment.
    """

    name = "adam"

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(lr)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1) or eps <= 0:
            raise ValueError(f"Adam needs betas in [0, 1) and eps > 0, got betas={betas!r}, eps={eps!r}")
        self.b1, self.b2, self.eps = float(b1), float(b2), float(eps)
        self._m: list[np.ndarray] = []
        self._v: list[np.ndarray] = []

    def _update(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        if not self._m:
            self._m = [np.zeros_like(p) for p in params]
            self._v = [np.zeros_like(p) for p in params]
        t = self.step_count + 1
        # scalars in float64, then one rounding to the parameters' dtype: the same on every rank
        step_size = self.lr * math.sqrt(1 - self.b2 ** t) / (1 - self.b1 ** t)
        for p, g, m, v in zip(params, grads, self._m, self._v):
            f = p.dtype.type
            m *= f(self.b1)
            m += f(1 - self.b1) * g
            v *= f(self.b2)
            v += f(1 - self.b2) * (g * g)
            p -= f(step_size) * m / (np.sqrt(v) + f(self.eps))

    def _slots(self) -> dict[str, list[np.ndarray]]:
        return {"m": self._m, "v": self._v} if self._m else {}

    def _slot_names(self) -> tuple[str, ...]:
        return ("m", "v")

    def _set_slots(self, slots: dict[str, list[np.ndarray]]) -> None:
        self._m, self._v = slots.get("m", []), slots.get("v", [])


OPTIMIZERS = ("sgd", "momentum", "adam")
"""The ``--optimizer`` names."""


def make_optimizer(name: str, lr: float) -> Optimizer:
    """The optimizer called ``name`` with learning rate ``lr``.

    Parameters
    ----------
    name : {"sgd", "momentum", "adam"}
        One of :data:`OPTIMIZERS` (momentum 0.9; Adam's betas 0.9, 0.999, eps 1e-8).
    lr : float
        Learning rate (> 0).

    Returns
    -------
    Optimizer
    """
    if name == "sgd":
        return SGD(lr)
    if name == "momentum":
        return Momentum(lr)
    if name == "adam":
        return Adam(lr)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
