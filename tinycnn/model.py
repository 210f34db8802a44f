"""``Sequential``: layers applied in order, with Keras' summary and weight files."""
from __future__ import annotations

import os
import tempfile
import time
import zipfile
import zlib

import numpy as np

from .layers.base import Layer, to_input_tensor
from .plan.fold import inference_copy, run_layers
from .plan.inference import InferencePlan
from .tensor import Tensor, is_grad_enabled, no_grad


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
        """x (N, *input_shape) float array or Tensor -> output Tensor (N, ...).

        In inference without gradients (``training=False`` under ``no_grad``, as
        ``predict`` runs) the model's inference copy computes it (``inference_copy``:
        BatchNorm folded, Dropout left out, Winograd's kernel transforms kept), the same
        outputs to float32 rounding and faster. The copy is made at the first such call and
        made again whenever a weight may have changed since: an optimiser step,
        ``set_weights``, ``load_weights``, or any other hand-out of a weight's array
        (``Tensor.data``)."""
        x = to_input_tensor(x, f"Sequential '{self.name}'")
        if self.input_shape is None:
            self.build(x.shape[1:])
        elif x.ndim != len(self.input_shape) + 1 or x.shape[-1] != self.input_shape[-1]:
            raise ValueError(f"Sequential '{self.name}': built for input shape (batch,) + "
                             f"{self.input_shape}, got {x.shape}")
        if not training and not is_grad_enabled():
            return Tensor(self._current_plan(x.shape[1:])(x.data))
        return run_layers(self.layers, x, training)

    def predict(self, x, batch_size=256) -> np.ndarray:
        """Outputs (N, ...) for an array of inputs, in batches, without recording a graph
        (so from the inference copy: see ``__call__``)."""
        outs = []
        with no_grad():
            for s in range(0, len(x), batch_size):
                outs.append(self(x[s:s + batch_size], training=False).data)
        return np.concatenate(outs) if outs else np.zeros((0,), np.float32)

    def _current_inference_copy(self) -> "Sequential":
        """This model's inference copy, made anew when a weight's ``version`` moved (or a
        weight was replaced) since the last one; the model itself if it is a copy."""
        if getattr(self, "is_inference_copy", False) or not self.layers:
            return self
        weights = [w for layer in self.all_layers() for w in layer.weights.values()]
        key = [(id(w), w.version) for w in weights]
        cached = getattr(self, "_inference", None)
        if cached is None or cached[0] != key:
            copy = self.inference_copy()
            cached = self._inference = ([(id(w), w.version) for w in weights], copy)
        return cached[1]

    def _current_plan(self, input_shape) -> InferencePlan:
        """The inference plan (``tinycnn.plan.inference``) of this model's current inference
        copy for inputs of ``input_shape``, made at the first call for that shape and made
        again with the copy, or when one of the copy's own weights changed."""
        copy = self._current_inference_copy()
        plans = copy.__dict__.setdefault("_plans", {})
        key = tuple(input_shape)
        cached = plans.get(key)
        versions = [(id(w), w.version) for layer in copy.all_layers() for w in layer.weights.values()]
        if cached is None or cached[0] != versions:
            plan = InferencePlan(copy.layers, key, name=self.name)
            versions = [(id(w), w.version) for layer in copy.all_layers() for w in layer.weights.values()]
            cached = plans[key] = (versions, plan)
        return cached[1]

    def inference_plan(self, input_shape=None) -> InferencePlan:
        """The flat list of kernel calls that ``predict`` and ``model(x)`` under ``no_grad``
        run (``tinycnn.plan.inference.InferencePlan``): print it to see the steps, call
        its ``profile(x)`` to time them."""
        self._require_built("inference_plan")
        return self._current_plan(tuple(input_shape or self.input_shape))

    def inference_copy(self) -> "Sequential":
        """A copy for inference only, with BatchNormalization folded into the layers before
        it and Dropout left out (``tinycnn.plan.fold.inference_copy``): the same outputs,
        faster on small batches. A snapshot: later changes to this model do not reach it."""
        return inference_copy(self)

    # -- training, as Keras' fit and evaluate ----------------------------------------------
    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, optimizer=None, loss=None,
            class_weights=None, label_smoothing=0.0, augment=None, mix=None, shuffle=True, seed=0,
            callbacks=(), verbose=1, initial_epoch=0) -> "History":
        """Train on inputs x (N, ...) and integer labels y (N,), in Keras' spirit; y may
        instead be target probabilities (N, K) (soft labels: distillation), and then
        ``accuracy`` counts agreement with each row's most probable class.

        Each epoch visits the examples in a random order (``shuffle``), one optimiser step
        (``train_step``) per batch of ``batch_size``; ``augment(batch, rng)`` may transform
        each training batch (e.g. ``fer_models.augment.Augmenter()``), and then
        ``mix(batch, targets, rng) -> (batch, targets)`` may combine its examples and their
        target probabilities (N, K) (MixUp, CutMix: ``fer_models.augment.Mixer``; the
        accuracy shown counts the unmixed labels). After the epoch the model is
        evaluated on ``validation_data`` = (x_val, y_val) if given. Epoch k's randomness
        (order, augmentation, Dropout masks) comes from (``seed``, k) alone, so a run
        stopped after epoch k and continued with ``initial_epoch=k`` (same weights and
        optimiser state) goes on exactly as if it had never stopped.

        Args:
            optimizer: default Adam with Keras' defaults; kept on the model, so that a
                second ``fit`` continues with the same optimiser state.
            loss: ``loss(logits, labels) -> scalar Tensor``; default softmax
                cross-entropy from logits (with ``class_weights`` and ``label_smoothing``).
            callbacks: objects with any of ``on_epoch_begin(epoch)``,
                ``on_train_batch_begin(step)``, ``on_test_begin()`` and ``on_test_end()``
                (around the validation), ``on_epoch_end(epoch, logs)`` and
                ``on_train_end()`` (epochs count from 1; ``tinycnn.callbacks``); setting
                ``model.stop_training = True`` ends training.
            verbose: 0 silent, 1 a progress bar per epoch, 2 one line per epoch.
            initial_epoch: epochs already done; training runs epochs initial_epoch+1 .. epochs.

        Returns a ``History`` (also ``model.history``) whose ``history`` maps ``loss``,
        ``accuracy`` (and ``val_loss``, ``val_accuracy``) to one value per epoch, and whose
        ``seconds`` holds each epoch's training time (validation excluded).
        Raises ``TrainingDiverged`` (a FloatingPointError) when the outputs or the loss
        stop being finite, naming the epoch and step.
        """
        from . import losses, optim
        x, y = _check_xy("fit", x, y, soft=True)
        y_hard = y.argmax(axis=1) if y.ndim == 2 else y
        if int(epochs) < 1 or int(batch_size) < 1 or int(initial_epoch) < 0:
            raise ValueError(f"Sequential '{self.name}'.fit(): epochs and batch_size must be positive and "
                             f"initial_epoch >= 0, got {epochs}, {batch_size} and {initial_epoch}")
        if validation_data is not None:
            validation_data = _check_xy("fit (validation_data)", *validation_data)
        if len(x) == 0:
            raise ValueError(f"Sequential '{self.name}'.fit(): no training examples (x has shape {x.shape})")
        if self.input_shape is None:
            self.build(x.shape[1:])
        if optimizer is not None:
            self.optimizer = optimizer
        elif getattr(self, "optimizer", None) is None:
            self.optimizer = optim.Adam(self.parameters())
        if loss is None:
            def loss(logits, labels):
                return losses.softmax_cross_entropy(logits, labels, class_weights=class_weights,
                                                    label_smoothing=label_smoothing)

        def hooks(name, *args):
            for callback in callbacks:
                if hasattr(callback, name):
                    getattr(callback, name)(*args)

        history, n, batch_size = History(), len(x), int(batch_size)
        self.history = history
        if mix is not None:   # mixing needs probabilities: one-hot rows of the model's K outputs
            shape = self.input_shape
            for layer in self.layers:
                shape = layer.compute_output_shape(shape)
            y = losses.target_probabilities(y, n, shape[-1], f"Sequential '{self.name}'.fit() with mix")
        steps = -(-n // batch_size)
        self.stop_training = False
        for epoch in range(int(initial_epoch) + 1, int(epochs) + 1):
            rng = np.random.default_rng([seed, epoch])
            self._seed_dropout(seed, epoch)
            hooks("on_epoch_begin", epoch)
            order = rng.permutation(n) if shuffle else np.arange(n)
            total_loss, correct, started = 0.0, 0, time.perf_counter()
            with _EpochProgress(epoch, epochs, steps, started, show=verbose == 1) as progress:
                for step in range(steps):
                    hooks("on_train_batch_begin", step)
                    idx = order[step * batch_size:(step + 1) * batch_size]
                    xb, yb = x[idx] if augment is None else augment(x[idx], rng), y[idx]
                    if mix is not None:
                        xb, yb = mix(xb, yb, rng)
                    value, logits = self.train_step(xb, yb, loss)
                    if not np.isfinite(value):
                        raise TrainingDiverged(epoch, step + 1, value)
                    total_loss += value * len(idx)
                    correct += int((logits.argmax(axis=1) == y_hard[idx]).sum())
                    progress.show(step, step * batch_size + len(idx), total_loss, correct, self.optimizer)
            seconds = time.perf_counter() - started
            logs = {"loss": total_loss / n, "accuracy": correct / n}
            if validation_data is not None:
                hooks("on_test_begin")
                logs["val_loss"], logs["val_accuracy"] = self.evaluate(*validation_data)
                hooks("on_test_end")
            history.record(epoch, logs, seconds)
            if verbose == 2:
                print(f"epoch {epoch}/{epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in logs.items())
                      + f" ({seconds:.0f} s)")
            hooks("on_epoch_end", epoch, logs)
            if self.stop_training:
                break
        hooks("on_train_end")
        return history

    def _seed_dropout(self, seed, epoch):
        """Each Dropout layer's masks for this epoch, from (its own seed, else fit's, epoch)."""
        from .layers.core import Dropout
        for i, layer in enumerate(self.all_layers()):
            if isinstance(layer, Dropout):
                layer.rng = np.random.default_rng([seed if layer.seed is None else layer.seed, epoch, i])

    def train_step(self, x, y, loss) -> tuple[float, np.ndarray]:
        """One optimiser step on one batch: the forward pass in training mode, the loss,
        the backward pass, ``self.optimizer``'s update (``fit`` sets the optimiser).

        Args:
            x: a batch of inputs (N, ...) float32.
            y: its labels (N,) int64, or target probabilities (N, K) float32.
            loss: ``loss(logits, y) -> scalar Tensor``.

        Returns (the loss value, the logits (N, K) as an array). Where the logits or the
        loss are not finite nothing is updated and the value is that loss (nan where the
        logits already were not finite): the caller decides to stop."""
        logits = self(x, training=True)
        if not np.isfinite(logits.data).all():
            return float("nan"), logits.data
        value = loss(logits, y)
        if not np.isfinite(value.item()):
            return value.item(), logits.data
        self.optimizer.zero_grad()
        value.backward()
        self.optimizer.step()
        return float(value.item()), logits.data

    def evaluate(self, x, y, batch_size=256):
        """(mean softmax cross-entropy, accuracy) of the model's logits on x (N, ...) with
        integer labels y (N,), in inference mode, without recording a graph."""
        x, y = _check_xy("evaluate", x, y)
        if len(x) == 0:
            raise ValueError(f"Sequential '{self.name}'.evaluate(): no examples (x has shape {x.shape})")
        logits = self.predict(x, batch_size=batch_size).astype(np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(y)), y].mean()), float((logits.argmax(axis=1) == y).mean())

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


class _EpochProgress:
    """``fit``'s progress bar for one epoch (shown where ``show``): the running loss and
    accuracy, images per second and the learning rate, refreshed every 10 steps."""

    def __init__(self, epoch, epochs, steps, started, show):
        from tqdm import tqdm   # not tqdm.auto: in a notebook without ipywidgets it warns on import
        self.bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", disable=not show, leave=True,
                        unit="batch", dynamic_ncols=True)
        self.steps, self.started = steps, started

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def show(self, step, seen, total_loss, correct, optimizer):
        """After ``step`` (from 0), ``seen`` examples into the epoch."""
        self.bar.update(1)
        if step % 10 == 0 or step == self.steps - 1:
            self.bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}",
                                 img_s=f"{seen / (time.perf_counter() - self.started):.0f}",
                                 lr=f"{getattr(optimizer, 'lr', float('nan')):.2e}", refresh=False)


class History:
    """What ``fit`` returns: ``history`` maps each metric to its value per epoch, as Keras';
    ``seconds``: each epoch's training time, validation excluded."""

    def __init__(self):
        self.epoch: list[int] = []
        self.history: dict[str, list[float]] = {}
        self.seconds: list[float] = []

    def record(self, epoch, logs, seconds):
        self.epoch.append(epoch)
        self.seconds.append(seconds)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))


class TrainingDiverged(FloatingPointError):
    """The model's outputs or loss stopped being finite during ``fit``."""

    def __init__(self, epoch, step, value):
        super().__init__(f"the loss became {value} at epoch {epoch}, step {step}: training diverged; "
                         "try a lower learning rate")
        self.epoch, self.step, self.value = epoch, step, value


def _check_xy(what, x, y, soft=False):
    """Inputs as float32 and labels as int64 (or, where ``soft``, probability rows (N, K)
    as float32), of the same length, or a ValueError."""
    x = np.asarray(x)
    y = np.asarray(y)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what}: inputs must be a float array, got dtype {x.dtype} with shape {x.shape}")
    if soft and y.ndim == 2 and np.issubdtype(y.dtype, np.floating):
        if len(x) != len(y):
            raise ValueError(f"{what}: {len(x)} inputs but {len(y)} target rows")
        return x.astype(np.float32, copy=False), y.astype(np.float32, copy=False)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what}: labels must be a 1-D integer array{' or (N, K) probabilities' if soft else ''}, "
                         f"got dtype {y.dtype} shape {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{what}: {len(x)} inputs but {len(y)} labels")
    return x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)


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


class WriteError(OSError):
    """A file could not be written (a full disk, a read-only folder, no permission): its
    message names the file and the cause, e.g. ``cannot write run/checkpoint.npz: No
    space left on device``. Raised by ``write_atomic``, which has then left the file
    that was there before untouched and no temporary file behind."""

    def __str__(self):
        return f"cannot write {self.filename}: {self.strerror}"


def write_atomic(path, write, suffix=".tmp"):
    """``write(temporary path)`` in ``path``'s folder, then rename it over ``path``: a crash
    or a kill leaves the old file or the new one, never half of one. The file gets the
    permissions of any new file (0666 less the umask), not mkstemp's private 0600.
    An ``OSError`` on the way becomes a ``WriteError`` naming ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=suffix)
        os.close(fd)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(e.errno, e.strerror or str(e), path) from e
        raise


def save_npz_atomic(path, arrays: dict, compressed=False):
    """np.savez (``np.savez_compressed`` if ``compressed``) to a temporary file in the same
    folder, then rename over ``path``."""
    def write(tmp):
        with open(tmp, "wb") as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)
    write_atomic(path, write, suffix=".tmp.npz")
