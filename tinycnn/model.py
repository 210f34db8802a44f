"""``Sequential``: layers applied in order, with Keras' summary and weight files."""
from __future__ import annotations

import os
import tempfile
import zipfile
import zlib

import numpy as np

from .layers.base import Layer, to_input_tensor
from .layers.fold import run_layers
from .tensor import Tensor


class Sequential:
    """A stack of layers, called as ``model(x, training=...)``.

    Args:
        layers: the layers, in order.
        input_shape: optional shape of one example, e.g. ``(48, 48, 1)``; if given the
            model is built at once (otherwise at the first call, from the input).
        seed: seeds every initialiser and dropout stream, so two models built with the
            same seed are identical.
        name: shown by ``summary()``.
    """

    def __init__(self, layers=(), input_shape=None, seed=0, name="sequential"):
        self.layers: list[Layer] = []
        self.name, self.seed = name, seed
        self.input_shape = None
        self._names: dict[str, int] = {}
        for layer in layers:
            self.add(layer)
        if input_shape is not None:
            self.build(input_shape)

    def add(self, layer: Layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: expected a tinycnn layer, got {type(layer).__name__}")
        for sub in [layer] + _all_sublayers(layer):
            self._name(sub)
        self.layers.append(layer)

    def _name(self, layer):
        if layer.name is None:  # Keras style: conv2d, conv2d_1, conv2d_2, ...
            k = self._names.get(layer.kind, 0)
            layer.name = layer.kind if k == 0 else f"{layer.kind}_{k}"
            self._names[layer.kind] = k + 1
        taken = [l.name for l in self.all_layers()]
        if layer.name in taken and layer not in self.all_layers():
            raise ValueError(f"Sequential: two layers named {layer.name!r}; names must be unique")

    def all_layers(self) -> list[Layer]:
        out = []
        for layer in self.layers:
            out += [layer] + _all_sublayers(layer)
        return out

    # -- building and calling ---------------------------------------------------------------
    def build(self, input_shape):
        """Create every layer's weights for examples of ``input_shape`` (no batch axis)."""
        rng = np.random.default_rng(self.seed)
        shape = tuple(int(d) for d in input_shape)
        if self.input_shape is None:
            self.input_shape = shape
        for layer in self.layers:
            shape = layer.ensure_built(shape, rng)
        return shape

    def __call__(self, x, training: bool = False) -> Tensor:
        """x (N, *input_shape) float array or Tensor -> output Tensor (N, ...)."""
        x = to_input_tensor(x, f"Sequential '{self.name}'")
        if self.input_shape is None:
            self.build(x.shape[1:])
        elif x.ndim != len(self.input_shape) + 1 or x.shape[-1] != self.input_shape[-1]:
            raise ValueError(f"Sequential '{self.name}': built for input shape (batch,) + "
                             f"{self.input_shape}, got {x.shape}")
        return run_layers(self.layers, x, training)

    def predict(self, x, batch_size=256) -> np.ndarray:
        """Outputs (N, ...) for an array of inputs, in batches, without recording a graph."""
        from .tensor import no_grad
        outs = []
        with no_grad():
            for s in range(0, len(x), batch_size):
                outs.append(self(x[s:s + batch_size], training=False).data)
        return np.concatenate(outs) if outs else np.zeros((0,), np.float32)

    # -- parameters and weights -----------------------------------------------------------
    def parameters(self) -> "Parameters":
        """Trainable tensors, in layer order: what an optimiser updates.

        A live view: iterating it after the model is built (at its first call) yields
        the weights created then, so an optimiser can be made before the first call.
        """
        return Parameters(self)

    def named_weights(self) -> dict[str, Tensor]:
        """Every weight, trainable or not, keyed ``layer_name/weight_name``."""
        self._require_built("named_weights")
        return {f"{layer.name}/{k}": w for layer in self.all_layers() for k, w in layer.weights.items()}

    def count_params(self) -> int:
        return sum(layer.count_params() for layer in self.layers)

    def multiply_adds(self) -> int:
        """Multiply-adds for one example, summed over layers."""
        self._require_built("multiply_adds")
        total, shape = 0, self.input_shape
        for layer in self.layers:
            total += layer.multiply_adds(shape)
            shape = layer.compute_output_shape(shape)
        return total

    def get_weights(self) -> dict[str, np.ndarray]:
        return {k: w.data.copy() for k, w in self.named_weights().items()}

    def set_weights(self, weights: dict):
        """Load ``{layer/weight: array}``; every name must match and every shape agree."""
        mine = self.named_weights()
        missing = sorted(set(mine) - set(weights))
        extra = sorted(set(weights) - set(mine))
        if missing or extra:
            raise ValueError(f"Sequential '{self.name}': weights do not match this model; "
                             f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                             f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")
        for key, t in mine.items():
            value = np.asarray(weights[key])
            layer, wname = key.split("/", 1)[0], key.rsplit("/", 1)[1]
            if value.shape != t.shape:
                raise ValueError(f"layer '{layer}': weight '{wname}' has shape {t.shape} in this model "
                                 f"but {value.shape} in the file")
            if not np.issubdtype(value.dtype, np.number) or not np.isfinite(value).all():
                bad = "is not numeric" if not np.issubdtype(value.dtype, np.number) else \
                    f"holds NaN or inf (first at index {tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])})"
                raise ValueError(f"layer '{layer}': weight '{wname}' {bad}")
        for key, t in mine.items():
            t.data = np.asarray(weights[key], dtype=np.float32).copy()

    def save_weights(self, path):
        """Write every weight to ``path`` (.npz), atomically: a crash never leaves half a file."""
        save_npz_atomic(path, self.get_weights())

    def load_weights(self, path):
        """Load a file written by ``save_weights``; a damaged or foreign file, or one whose
        weights do not fit or hold NaN, raises ValueError naming the file."""
        try:
            self.set_weights(read_npz(path))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def _require_built(self, what):
        if self.input_shape is None:
            raise ValueError(f"Sequential '{self.name}'.{what}(): the model is not built yet; "
                             "pass input_shape= or call it on data first")

    # -- summary -------------------------------------------------------------------------
    def summary(self, print_fn=print):
        """Print each layer's output shape and parameter count, as Keras' ``summary()``."""
        self._require_built("summary")
        rows, shape = [], self.input_shape
        for layer in self.layers:
            shape = layer.compute_output_shape(shape)
            rows.append((f"{layer.name} ({type(layer).__name__})", str((None,) + tuple(shape)),
                         f"{layer.count_params():,}"))
        w = [max(len(r[i]) for r in rows + [("Layer (type)", "Output Shape", "Param #")]) + 2
             for i in range(3)]
        line = "-" * (sum(w))
        total = self.count_params()
        trainable = sum(w.size for w in self.named_weights().values() if w.requires_grad)
        out = [f'Model: "{self.name}"', line,
               f"{'Layer (type)':<{w[0]}}{'Output Shape':<{w[1]}}{'Param #':>{w[2]}}", "=" * sum(w)]
        out += [f"{a:<{w[0]}}{b:<{w[1]}}{c:>{w[2]}}" for a, b, c in rows]
        out += ["=" * sum(w), f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                f"Non-trainable params: {total - trainable:,}", line]
        print_fn("\n".join(out))


class Parameters:
    """Iterable view of a model's trainable tensors, read afresh on each iteration."""

    def __init__(self, model):
        self.model = model

    def __iter__(self):
        return iter([p for layer in self.model.layers for p in layer.parameters()])

    def __len__(self):
        return len(list(iter(self)))


def _all_sublayers(layer):
    out = []
    for sub in layer.sublayers():
        out += [sub] + _all_sublayers(sub)
    return out


def read_npz(path, what="weights file") -> dict[str, np.ndarray]:
    """Every array of an .npz as ``{name: array}``, never unpickling anything.

    A missing file raises FileNotFoundError; a truncated, damaged or foreign one (a text
    file, a .npy, pickled data) raises ValueError naming the file and what is wrong."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("a single array (.npy), not an .npz archive")
        with f:
            return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
        reason = "not a NumPy file at all" if "pickle" in str(e).lower() else str(e) or type(e).__name__
        raise ValueError(f"{path}: not a readable .npz {what} (truncated, damaged or another format: "
                         f"{reason})") from None


def save_npz_atomic(path, arrays: dict):
    """np.savez to a temporary file in the same folder, then rename over ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
