"""Models in numpy with their own forward and backward passes: linear, logistic, softmax regression, an MLP
and an embedding-bag classifier.

A model holds no parameters: it describes them (:meth:`Model.shapes`),
initialises a list of them deterministically from a seed (:meth:`Model.init`),
and computes the mean loss of a batch and its gradients for a given list
(:meth:`Model.loss_and_grads`). The arithmetic runs in the parameters' dtype
(float32 in training; float64 copies for gradient checks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MODELS", "EmbeddingBag", "LinearRegression", "LogisticRegression", "MLP", "Model", "SoftmaxRegression",
           "make_model"]


class Model:
    """Base class: parameter layout, initialisation, loss and gradients, evaluation.

    Parameters
    ----------
    features : int
        Number of input features.
    """

    name = "model"
    """The ``--model`` name."""
    task = "classification"
    """``"classification"`` or ``"regression"``."""
    classes = 0
    """Number of classes (0 for regression)."""

    def __init__(self, features: int) -> None:
        if features < 1:
            raise ValueError(f"features must be >= 1, got {features}")
        self.features = int(features)

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, shape)`` of every parameter, in order."""
        raise NotImplementedError

    def init(self, seed: int, dtype: np.dtype = np.float32) -> list[np.ndarray]:
        """New parameters, the same for the same seed on every rank and machine.

        Weights are drawn from a normal distribution (He scaling for layers
        followed by a ReLU, ``0.01`` for the linear models) with numpy's PCG64
        seeded by ``seed``; biases are zero.
        """
        rng = np.random.default_rng([int(seed), 0x5CA1E])
        params = []
        for name, shape in self.shapes():
            if name.startswith("b"):
                params.append(np.zeros(shape, dtype=dtype))
            else:
                params.append((rng.standard_normal(shape) * self._init_scale(name, shape)).astype(dtype))
        return params

    def _init_scale(self, name: str, shape: tuple[int, ...]) -> float:
        return 0.01

    def forward(self, params: Sequence[np.ndarray], X: np.ndarray) -> np.ndarray:
        """The model's output: predictions (regression), probabilities of class 1 (logistic), logits."""
        raise NotImplementedError

    def loss_and_grads(self, params: Sequence[np.ndarray], X: np.ndarray,
                       y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """Mean loss over the batch and its gradient for every parameter (same shapes and dtypes)."""
        raise NotImplementedError

    def evaluate(self, params: Sequence[np.ndarray], X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Sums over the samples of ``X`` (to add up over ranks): ``loss`` and ``correct`` (classification) or
        ``loss``, ``sse``, ``y_sum``, ``y_sq_sum`` (regression), and ``count``."""
        raise NotImplementedError

    def check_labels(self, y: np.ndarray, what: str = "labels") -> None:
        """``ValueError`` when ``y`` does not fit the model (classes out of range, non-integers, NaN)."""
        y = np.asarray(y)
        if y.size and not np.isfinite(y.astype(np.float64)).all():
            raise ValueError(f"{what} contain NaN or Inf")
        if self.task == "regression":
            return
        if y.size and not np.array_equal(y, np.round(y)):
            raise ValueError(f"{what} must be integer class labels for --model {self.name}, got non-integers")
        if y.size and (y.min() < 0 or y.max() >= self.classes):
            hint = " (logistic regression is binary: use --model softmax for more classes)" \
                if self.classes == 2 else ""
            raise ValueError(f"{what} must lie in [0, {self.classes - 1}] for --model {self.name} with "
                             f"{self.classes} classes, got labels in [{int(y.min())}, {int(y.max())}]{hint}")


class LinearRegression(Model):
    """Least-squares linear regression: ``y_hat = X w + b``, loss ``mean((y_hat - y)^2)``."""

    task = "regression"
    name = "linear"

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("w", (self.features,)), ("b", (1,))]

    def forward(self, params: Sequence[np.ndarray], X: np.ndarray) -> np.ndarray:
        w, b = params
        return X @ w + b[0]

    def loss_and_grads(self, params: Sequence[np.ndarray], X: np.ndarray,
                       y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        w, _ = params
        r = self.forward(params, X) - y.astype(w.dtype, copy=False)
        n = max(X.shape[0], 1)
        dr = (2 / n) * r
        return float(np.mean(r * r)) if r.size else 0.0, [X.T @ dr, np.array([dr.sum()], dtype=w.dtype)]

    def evaluate(self, params: Sequence[np.ndarray], X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        y64 = y.astype(np.float64)
        r = self.forward(params, X).astype(np.float64) - y64
        sse = float(r @ r)
        return {"loss": sse, "sse": sse, "y_sum": float(y64.sum()), "y_sq_sum": float(y64 @ y64),
                "count": float(X.shape[0])}


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    """log(sigmoid(z)) without overflow."""
    return -np.logaddexp(np.zeros((), dtype=z.dtype), -z)


class LogisticRegression(Model):
    """Binary logistic regression: ``p = sigmoid(X w + b)``, loss the mean binary cross-entropy; labels 0/1."""

    classes = 2
    name = "logistic"

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("w", (self.features,)), ("b", (1,))]

    def logits(self, params: Sequence[np.ndarray], X: np.ndarray) -> np.ndarray:
        w, b = params
        return X @ w + b[0]

    def forward(self, params: Sequence[np.ndarray], X: np.ndarray) -> np.ndarray:
        z = self.logits(params, X)
        return np.exp(_log_sigmoid(z))

    def loss_and_grads(self, params: Sequence[np.ndarray], X: np.ndarray,
                       y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        w, _ = params
        z = self.logits(params, X)
        t = y.astype(w.dtype, copy=False)
        # -[t log s(z) + (1-t) log s(-z)]
        losses = -(t * _log_sigmoid(z) + (1 - t) * _log_sigmoid(-z))
        n = max(X.shape[0], 1)
        dz = (np.exp(_log_sigmoid(z)) - t) / n
        return float(losses.mean()) if losses.size else 0.0, [X.T @ dz, np.array([dz.sum()], dtype=w.dtype)]

    def evaluate(self, params: Sequence[np.ndarray], X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        z = self.logits(params, X).astype(np.float64)
        t = y.astype(np.float64)
        loss = float(-(t * _log_sigmoid(z) + (1 - t) * _log_sigmoid(-z)).sum())
        return {"loss": loss, "correct": float(((z > 0) == (t > 0.5)).sum()), "count": float(X.shape[0])}


def _softmax_xent(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-sample cross-entropy, softmax probabilities) of integer labels ``y``."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_z
    rows = np.arange(logits.shape[0])
    return -log_p[rows, y], np.exp(log_p)


class SoftmaxRegression(Model):
    """Multinomial logistic regression: ``softmax(X W + b)``, loss the mean cross-entropy; labels 0..K-1.

    Parameters
    ----------
    features : int
        Number of input features.
    classes : int
        Number of classes K (>= 2).
    """

    name = "softmax"

    def __init__(self, features: int, classes: int) -> None:
        super().__init__(features)
        if classes < 2:
            raise ValueError(f"classes must be >= 2, got {classes}")
        self.classes = int(classes)

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("W", (self.features, self.classes)), ("b", (self.classes,))]

    def forward(self, params: Sequence[np.ndarray], X: np.ndarray) -> np.ndarray:
        W, b = params
        return X @ W + b

    def loss_and_grads(self, params: Sequence[np.ndarray], X: np.ndarray,
                       y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        logits = self.forward(params, X)
        labels = y.astype(np.intp, copy=False)
        losses, probs = _softmax_xent(logits, labels)
        n = max(X.shape[0], 1)
        dlogits = probs
        dlogits[np.arange(X.shape[0]), labels] -= 1
        dlogits /= n
        return float(losses.mean()) if losses.size else 0.0, [X.T @ dlogits, dlogits.sum(axis=0)]

    def evaluate(self, params: Sequence[np.ndarray], X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        logits = self.forward(params, X).astype(np.float64)
        labels = y.astype(np.intp)
        losses, _ = _softmax_xent(logits, labels)
        return {"loss": float(losses.sum()), "correct": float((logits.argmax(axis=1) == labels).sum()),
                "count": float(X.shape[0])}


class MLP(SoftmaxRegression):
    """Multi-layer perceptron: ReLU hidden layers of the given sizes and a softmax output.

    Parameters
    ----------
    features : int
        Number of input features.
    classes : int
        Number of classes (>= 2).
    hidden : sequence of int
        Sizes of the hidden layers (at least one).
    """

    name = "mlp"

    def __init__(self, features: int, classes: int, hidden: Sequence[int]) -> None:
        super().__init__(features, classes)
        hidden = [int(h) for h in hidden]
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden layer sizes must be positive integers, got {hidden}")
        self.hidden = hidden

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        sizes = [self.features, *self.hidden, self.classes]
        out: list[tuple[str, tuple[int, ...]]] = []
        for i in range(len(sizes) - 1):
            out += [(f"W{i + 1}", (sizes[i], sizes[i + 1])), (f"b{i + 1}", (sizes[i + 1],))]
        return out

    def _init_scale(self, name: str, shape: tuple[int, ...]) -> float:
        return float(np.sqrt(2.0 / shape[0]))  # He initialisation (the output layer too: it is small anyway)

    def _layers(self, params: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(params[i], params[i + 1]) for i in range(0, len(params), 2)]

    def forward(self, params: Sequence[np.ndarray], X: np.ndarray) -> np.ndarray:
        h = X
        layers = self._layers(params)
        for W, b in layers[:-1]:
            h = np.maximum(h @ W + b, 0)
        W, b = layers[-1]
        return h @ W + b

    def loss_and_grads(self, params: Sequence[np.ndarray], X: np.ndarray,
                       y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        loss, grads, _ = self._backward(params, X.astype(params[0].dtype, copy=False), y, input_grad=False)
        return loss, grads

    def _backward(self, params: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray,
                  input_grad: bool) -> tuple[float, list[np.ndarray], np.ndarray | None]:
        """Mean loss, the layers' gradients (W1, b1, ...) and, when ``input_grad``, the loss's gradient in ``x``."""
        layers = self._layers(params)
        acts = [x]
        for W, b in layers[:-1]:
            acts.append(np.maximum(acts[-1] @ W + b, 0))
        W, b = layers[-1]
        logits = acts[-1] @ W + b
        labels = y.astype(np.intp, copy=False)
        losses, probs = _softmax_xent(logits, labels)
        delta = probs
        delta[np.arange(x.shape[0]), labels] -= 1
        delta /= max(x.shape[0], 1)
        grads: list[np.ndarray] = []
        for i in range(len(layers) - 1, -1, -1):
            W, _ = layers[i]
            grads += [delta.sum(axis=0), acts[i].T @ delta]  # reversed below: (b_i, W_i)
            if i:
                delta = (delta @ W.T) * (acts[i] > 0)
        grads.reverse()
        return float(losses.mean()) if losses.size else 0.0, grads, delta @ layers[0][0].T if input_grad else None


class EmbeddingBag(MLP):
    """Embedding-bag classifier: token ids -> mean (or sum) of their embedding rows -> MLP -> softmax.

    A sample is a row of token ids in ``[0, vocab)`` padded with ``-1`` (bags
    of any length up to the row's width; an empty bag pools to zeros). The
    embedding ``E`` (``vocab x embed_dim``) is the first parameter; the MLP's
    layers follow as in :class:`MLP`. The gradient of ``E`` is a dense
    ``(vocab, embed_dim)`` array whose rows are exactly ``0.0`` except those of
    the batch's tokens: a gradient that is sparse by nature (``--compression
    sparse`` sends just those rows).

    Parameters
    ----------
    vocab : int
        Number of token ids (rows of ``E``, >= 1).
    embed_dim : int
        Width of an embedding row (the MLP's input).
    classes : int
        Number of classes (>= 2).
    hidden : sequence of int
        Sizes of the MLP's hidden layers (at least one).
    mode : {"mean", "sum"}
        How a bag's rows are pooled (``torch.nn.EmbeddingBag``'s modes).
    """

    name = "embedding-bag"
    task = "classification"
    eval_rows = 4096
    """Samples per chunk in :meth:`evaluate` (the pooled rows are gathered as ``(n, width, embed_dim)``)."""

    def __init__(self, vocab: int, embed_dim: int, classes: int, hidden: Sequence[int], mode: str = "mean") -> None:
        super().__init__(embed_dim, classes, hidden)
        if vocab < 1:
            raise ValueError(f"the vocabulary must hold at least 1 token, got {vocab}")
        if mode not in BAG_MODES:
            raise ValueError(f"bag mode must be one of {', '.join(BAG_MODES)}, got {mode!r}")
        self.vocab, self.embed_dim, self.mode = int(vocab), int(embed_dim), mode

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("E", (self.vocab, self.embed_dim)), *super().shapes()]

    def _init_scale(self, name: str, shape: tuple[int, ...]) -> float:
        # Small embeddings: the rows of rare tokens, which training hardly moves, add little noise to a bag's mean.
        return 0.1 if name == "E" else super()._init_scale(name, shape)

    def _pool(self, E: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pooled rows ``(n, embed_dim)``, the mask of real tokens, each bag's divisor)."""
        ids = np.asarray(X)
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"the embedding bag takes a 2-D integer array of token ids, got {ids.dtype}{ids.shape}")
        mask = ids >= 0
        if ids.size and ids.max() >= self.vocab:
            raise ValueError(f"token id {int(ids.max())} is outside the vocabulary of {self.vocab}")
        rows = E[np.where(mask, ids, 0)]
        rows *= mask[..., None]
        pooled = rows.sum(axis=1)
        divisor = np.maximum(mask.sum(axis=1), 1).astype(E.dtype) if self.mode == "mean" \
            else np.ones(ids.shape[0], dtype=E.dtype)
        if self.mode == "mean":
            pooled /= divisor[:, None]
        return pooled, mask, divisor

    def forward(self, params: Sequence[np.ndarray], X: np.ndarray) -> np.ndarray:
        pooled, _, _ = self._pool(params[0], X)
        return MLP.forward(self, params[1:], pooled)

    def loss_and_grads(self, params: Sequence[np.ndarray], X: np.ndarray,
                       y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        E = params[0]
        pooled, mask, divisor = self._pool(E, X)
        loss, grads, delta = MLP._backward(self, params[1:], pooled, y, input_grad=True)
        assert delta is not None
        # Every token of bag i receives d(pooled_i) / divisor_i; repeated tokens add up (np.add.at, unbuffered).
        # Rows of tokens not in the batch stay exactly 0.0.
        d_rows = delta / divisor[:, None]
        owner, _ = np.nonzero(mask)
        dE = np.zeros_like(E)
        np.add.at(dE, X[mask], d_rows[owner])
        return loss, [dE, *grads]

    def evaluate(self, params: Sequence[np.ndarray], X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        out = {"loss": 0.0, "correct": 0.0, "count": float(X.shape[0])}
        for a in range(0, X.shape[0], self.eval_rows):
            pooled, _, _ = self._pool(params[0], X[a:a + self.eval_rows])
            logits = MLP.forward(self, params[1:], pooled).astype(np.float64)
            labels = y[a:a + self.eval_rows].astype(np.intp)
            losses, _ = _softmax_xent(logits, labels)
            out["loss"] += float(losses.sum())
            out["correct"] += float((logits.argmax(axis=1) == labels).sum())
        return out


BAG_MODES = ("mean", "sum")
"""How :class:`EmbeddingBag` pools a bag's rows (``--bag-mode``)."""

MODELS = ("linear", "logistic", "softmax", "mlp", "embedding-bag")
"""The ``--model`` names."""


def make_model(name: str, features: int, classes: int = 0, hidden: Sequence[int] = (128,), *, vocab: int = 100000,
               embed_dim: int = 32, bag_mode: str = "mean") -> Model:
    """The model called ``name`` for ``features`` inputs.

    Parameters
    ----------
    name : {"linear", "logistic", "softmax", "mlp", "embedding-bag"}
        One of :data:`MODELS`.
    features : int
        Number of input features (``embedding-bag``: ignored, its input is ``embed_dim`` wide).
    classes : int
        Number of classes (``softmax``, ``mlp`` and ``embedding-bag``; ignored otherwise).
    hidden : sequence of int
        Hidden layer sizes of the ``mlp`` and of the ``embedding-bag``'s MLP.
    vocab, embed_dim : int
        The ``embedding-bag``'s vocabulary and embedding width.
    bag_mode : {"mean", "sum"}
        How the ``embedding-bag`` pools a bag.

    Returns
    -------
    Model

    Raises
    ------
    ValueError
        For an unknown name or invalid sizes.
    """
    if name == "linear":
        return LinearRegression(features)
    if name == "logistic":
        return LogisticRegression(features)
    if name == "softmax":
        return SoftmaxRegression(features, classes)
    if name == "mlp":
        return MLP(features, classes, hidden)
    if name == "embedding-bag":
        return EmbeddingBag(vocab, embed_dim, classes, hidden, bag_mode)
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
