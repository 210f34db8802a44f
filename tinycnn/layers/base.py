"""``Layer``: what every layer shares — building at first call, parameters, input checks."""
from __future__ import annotations

import re

import numpy as np

from ..tensor import Tensor


def _snake(name: str) -> str:
    """Keras' naming: ``Conv2DTranspose`` -> ``conv2d_transpose``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


class Layer:
    """Base class. A layer builds its weights at the first call, from the input shape.

    Subclasses implement ``build(input_shape)``, ``call(x, training)`` and
    ``compute_output_shape(input_shape)``; shapes exclude the batch axis.

    Attributes:
        name: unique within a model (``Sequential`` fills it in Keras' style:
            ``conv2d``, ``conv2d_1``, ...).
        weights: ordered ``{name: Tensor}``; trainable ones have ``requires_grad``.
    """

    input_rank: int | None = None  # rank of one example (3 for H, W, C), None if any

    def __init__(self, name: str | None = None):
        self.name = name
        self.built = False
        self.input_shape: tuple | None = None
        self.weights: dict[str, Tensor] = {}

    # -- construction -------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return _snake(type(self).__name__)

    def add_weight(self, name, value, trainable=True) -> Tensor:
        t = Tensor(value, requires_grad=trainable, name=name)
        self.weights[name] = t
        return t

    def build(self, input_shape, rng):
        """Create the weights for inputs of ``input_shape`` (no batch axis)."""

    def compute_output_shape(self, input_shape):
        return input_shape

    def ensure_built(self, input_shape, rng=None):
        input_shape = tuple(int(d) for d in input_shape)
        if not self.built:
            self._check_rank(input_shape)
            # on its own, without a generator, a layer draws fresh random weights (and a
            # Dropout its own mask stream), as in Keras; Sequential(seed=...) or rng= make
            # them reproducible. (A fixed default gave every such layer the same ones.)
            self.build(input_shape, rng if rng is not None else np.random.default_rng())
            self.input_shape = input_shape
            self.built = True
        elif input_shape != self.input_shape:
            self._check_rank(input_shape)
            if self.weights:  # weights fix the channel count; weightless layers take any
                self._check_shape(input_shape)
        return self.compute_output_shape(input_shape)

    # -- checks where the input enters ---------------------------------------------------------
    def _label(self):
        return f"{type(self).__name__} '{self.name or self.kind}'"

    def _check_rank(self, input_shape):
        if self.input_rank is not None and len(input_shape) != self.input_rank:
            expect = {3: "(batch, height, width, channels)", 1: "(batch, features)"}.get(
                self.input_rank, f"rank {self.input_rank + 1}")
            raise ValueError(
                f"{self._label()}: expected input of shape {expect}, got shape "
                f"(batch,) + {input_shape} (rank {len(input_shape) + 1})")

    def _check_shape(self, input_shape):
        """Called when a built layer sees a new shape: only the last axis is fixed."""
        self._check_rank(input_shape)
        if input_shape[-1] != self.input_shape[-1]:
            raise ValueError(
                f"{self._label()}: built for {self.input_shape[-1]} input channels "
                f"(input shape {self.input_shape}), got {input_shape[-1]} (input shape {input_shape})")

    # -- use ---------------------------------------------------------------------------------
    def __call__(self, x, training: bool = False, rng=None):
        x = to_input_tensor(x, self._label())
        self.ensure_built(x.shape[1:], rng)
        return self.call(x, training)

    def call(self, x: Tensor, training: bool) -> Tensor:
        raise NotImplementedError

    def parameters(self) -> list[Tensor]:
        """Trainable weights, in a fixed order."""
        return [w for w in self.weights.values() if w.requires_grad]

    def sublayers(self) -> list["Layer"]:
        return []

    def count_params(self) -> int:
        return sum(w.size for w in self.weights.values())

    def multiply_adds(self, input_shape) -> int:
        """Multiply-adds per example (0 for layers that do no products)."""
        return 0

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


def pair(v, what, layer):
    pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(pair) != 2 or any(int(p) < 1 for p in pair):
        raise ValueError(f"{layer}: {what} must be a positive int or a pair of them, got {v!r}")
    return int(pair[0]), int(pair[1])


def check_padding(padding, layer):
    if padding not in ("valid", "same"):
        raise ValueError(f"{layer}: padding must be 'valid' or 'same', got {padding!r}")
    return padding


def to_input_tensor(x, who: str) -> Tensor:
    """Accept a float array or Tensor with a batch axis; reject ints, NaN and scalars."""
    if isinstance(x, Tensor):
        if x.ndim < 2:
            raise ValueError(f"{who}: input needs a batch axis, got shape {x.shape}")
        return x
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(
            f"{who}: input must be a float array (scale images to [0, 1] first), got dtype "
            f"{a.dtype} with shape {a.shape}")
    if a.ndim < 2:
        raise ValueError(f"{who}: input needs a batch axis, got shape {a.shape}")
    if not np.isfinite(a).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])  # plain ints: "(1, 2)", not np.int64
        raise ValueError(f"{who}: input of shape {a.shape} holds NaN or inf, first at index {bad}")
    return Tensor(a.astype(np.float32, copy=False))
