"""Optimisers (Adam, SGD) and learning-rate schedules, with Keras' update rules."""
from __future__ import annotations

import math

import numpy as np

from .kernels import optim as K


class Optimizer:
    """Updates ``params`` (trainable Tensors) from their ``.grad``.

    ``lr`` is a plain attribute: a schedule or the training loop may set it between
    steps. ``weight_decay`` is decoupled, as in Keras 3 (and AdamW): before the update,
    ``p -= lr * weight_decay * p``.

    ``use_ema`` keeps an exponential moving average of every parameter, as Keras 3's
    optimisers do: after each step, ``average = ema_momentum * average + (1 -
    ema_momentum) * p`` (the first step sets it to p). The average of the weights along
    the last few hundred steps usually generalises better than the last weights;
    ``swap_ema_weights`` puts it into the model (``tinycnn.callbacks.SwapEMAWeights``
    does so for ``fit``'s validation).
    """

    def __init__(self, params, lr, weight_decay=0.0, use_ema=False, ema_momentum=0.99):
        # ``params`` may be a model's live parameter view: a model built at its first call
        # has no weights yet when the optimiser is made, so they are read at each step.
        self._params = params
        if lr <= 0:
            raise ValueError(f"{type(self).__name__}: lr must be positive, got {lr}")
        if not 0.0 <= ema_momentum < 1.0:
            raise ValueError(f"{type(self).__name__}: ema_momentum must be in [0, 1), got {ema_momentum}")
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.use_ema, self.ema_momentum = bool(use_ema), float(ema_momentum)
        self.ema = []   # the parameters' moving averages, with use_ema
        self.iterations = 0

    @property
    def params(self):
        return list(self._params)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        params = self.params
        if not params:
            raise ValueError(f"{type(self).__name__}.step(): no parameters to optimise (is the model built?)")
        self._ensure_slots(params)
        self.iterations += 1
        for i, p in enumerate(params):
            if p.grad is None:
                continue
            if self.weight_decay:
                p.data -= np.float32(self.lr * self.weight_decay) * p.data
            self._update(i, p.data, p.grad.astype(np.float32, copy=False))
        if self.use_ema:
            self._update_ema(params)

    def _update(self, i, value, grad):
        raise NotImplementedError

    def _update_ema(self, params):
        """average = m * average + (1 - m) * p, written as average += (1 - m) * (p - average);
        m = 0 at the first step, which sets the average to the parameters."""
        keep = np.float32(1.0 - (self.ema_momentum if self.iterations > 1 else 0.0))
        for p, average in zip(params, self.ema):
            average += keep * (p.data - average)

    def swap_ema_weights(self):
        """Exchange every parameter's values with its moving average (``use_ema``): a
        second call puts the trained values back. Evaluate or save the averaged model
        between the two calls."""
        if not self.use_ema:
            raise ValueError(f"{type(self).__name__}.swap_ema_weights(): this optimiser keeps no moving "
                             f"average (use_ema=False)")
        params = self.params
        if len(self.ema) != len(params):
            raise ValueError(f"{type(self).__name__}.swap_ema_weights(): no moving average yet (no step taken "
                             f"on these parameters)")
        for p, average in zip(params, self.ema):
            held = p.data.copy()
            p.data[...] = average
            average[...] = held

    def _ensure_slots(self, params):
        """Create the per-parameter state (zeros) the first time parameters are seen."""
        for arrays in self._all_slots().values():
            if len(arrays) != len(params):
                arrays[:] = [np.zeros_like(p.data) for p in params]

    # -- state, for resuming ---------------------------------------------------------------
    def _slots(self) -> dict[str, list]:
        return {}

    def _all_slots(self) -> dict[str, list]:
        """The update rule's slots, and the moving averages with ``use_ema``."""
        return {**self._slots(), **({"ema": self.ema} if self.use_ema else {})}

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"iterations": np.array(self.iterations), "lr": np.array(self.lr)}
        for slot, arrays in self._all_slots().items():
            for i, a in enumerate(arrays):
                state[f"{slot}/{i}"] = a.copy()  # a snapshot: later steps update the slots in place
        return state

    def load_state_dict(self, state):
        self.iterations = int(state["iterations"])
        self.lr = float(state["lr"])
        self._ensure_slots(self.params)
        for slot, arrays in self._all_slots().items():
            for i, a in enumerate(arrays):
                if f"{slot}/{i}" not in state:
                    raise ValueError(f"{type(self).__name__}: the saved state has no '{slot}/{i}'"
                                     + (" (it was saved without use_ema)" if slot == "ema" else ""))
                saved = np.asarray(state[f"{slot}/{i}"])
                if saved.shape != a.shape:
                    raise ValueError(f"{type(self).__name__}: state '{slot}/{i}' has shape {saved.shape}, "
                                     f"parameter {i} has {a.shape}")
                a[...] = saved


class Adam(Optimizer):
    """Adam (Kingma & Ba), with Keras' defaults and its form of the bias correction:

        m = b1*m + (1-b1)*g;   v = b2*v + (1-b2)*g^2
        p -= lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)
    """

    def __init__(self, params, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0, use_ema=False,
                 ema_momentum=0.99):
        super().__init__(params, lr, weight_decay, use_ema, ema_momentum)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.m, self.v = [], []

    def _slots(self):
        return {"m": self.m, "v": self.v}

    def _update(self, i, value, grad):
        t = self.iterations
        lr_t = self.lr * math.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)
        K.adam_update(value, np.ascontiguousarray(grad), self.m[i], self.v[i], self.beta_1, self.beta_2, lr_t,
                      self.epsilon)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as Keras:

        velocity = momentum * velocity - lr * g
        p += velocity                              (classical)
        p += momentum * velocity - lr * g          (Nesterov)
    """

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, use_ema=False,
                 ema_momentum=0.99):
        super().__init__(params, lr, weight_decay, use_ema, ema_momentum)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.velocity = []

    def _slots(self):
        return {"velocity": self.velocity}

    def _update(self, i, value, grad):
        lr = np.float32(self.lr)
        if self.momentum == 0.0:
            value -= lr * grad
            return
        vel = self.velocity[i]
        vel *= np.float32(self.momentum)
        vel -= lr * grad
        if self.nesterov:
            value += np.float32(self.momentum) * vel - lr * grad
        else:
            value += vel


# -- schedules: the training loop asks for the rate and sets ``optimizer.lr`` -----------------
class CosineDecay:
    """lr(step) = min_lr + (base_lr - min_lr) * (1 + cos(pi * step / total)) / 2, with an
    optional linear warm-up over the first ``warmup`` steps."""

    def __init__(self, base_lr, total_steps, min_lr=0.0, warmup=0):
        if total_steps < 1:
            raise ValueError(f"CosineDecay: total_steps must be positive, got {total_steps}")
        self.base_lr, self.total, self.min_lr, self.warmup = base_lr, total_steps, min_lr, warmup

    def __call__(self, step):
        if step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        t = min(max(step - self.warmup, 0) / max(self.total - self.warmup, 1), 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))


class ReduceLROnPlateau:
    """Multiply the rate by ``factor`` when ``metric`` has not improved for ``patience``
    epochs (as Keras' callback). ``mode='max'`` for accuracy, ``'min'`` for a loss."""

    def __init__(self, lr, factor=0.5, patience=3, min_lr=1e-6, mode="max", min_delta=1e-4):
        if mode not in ("max", "min"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'max' or 'min', got {mode!r}")
        self.lr, self.factor, self.patience, self.min_lr = lr, factor, patience, min_lr
        self.mode, self.min_delta = mode, min_delta
        self.best, self.wait = None, 0

    def step(self, metric):
        """Report an epoch's metric; returns the rate to use next."""
        better = (self.best is None or
                  (metric > self.best + self.min_delta if self.mode == "max" else metric < self.best - self.min_delta))
        if better:
            self.best, self.wait = metric, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.lr, self.wait = max(self.lr * self.factor, self.min_lr), 0
        return self.lr

    def state_dict(self):
        return {"lr": self.lr, "best": self.best, "wait": self.wait}

    def load_state_dict(self, s):
        self.lr, self.best, self.wait = s["lr"], s["best"], s["wait"]
