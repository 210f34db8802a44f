"""BatchNormalization, after a convolution (per channel) or a Dense layer (per feature)."""
from __future__ import annotations

import numpy as np

from ..kernels import norm as K
from ..tensor import Function
from .base import Layer


class BatchNormFn(Function):
    """Training-mode batch normalisation over every axis but the last.

    x (..., C), gamma (C,), beta (C,) -> y (..., C). Saved: x, the batch mean and
    inv_std = 1/sqrt(var + eps), each (C,), and gamma: backward needs nothing else. ``stats`` receives the batch mean
    and variance so the layer can update its moving averages.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, stats):
        c = x.shape[-1]
        y2, mean, var, inv_std = K.batchnorm_forward(x.reshape(-1, c), gamma, beta, eps)
        stats.update(mean=mean, var=var)
        ctx.save(x=x, mean=mean, inv_std=inv_std, gamma=gamma)
        return y2.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        c = ctx.x.shape[-1]
        dx2, dgamma, dbeta = K.batchnorm_backward(g.reshape(-1, c), ctx.x.reshape(-1, c), ctx.mean,
                                                  ctx.gamma, ctx.inv_std)
        return dx2.reshape(ctx.x.shape), dgamma, dbeta


class BatchNormInferenceFn(Function):
    """Inference-mode batch normalisation: a fixed affine map per channel.

    x (..., C), gamma, beta (C,) -> y = (x - mean) * inv_std * gamma + beta, with the
    moving mean and inv_std = 1/sqrt(moving_variance + eps) as constants.
    Saved: x, mean, inv_std, gamma.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, mean, inv_std):
        c = x.shape[-1]
        ctx.save(x=x, mean=mean, inv_std=inv_std, gamma=gamma)
        return K.batchnorm_inference(x.reshape(-1, c), mean, inv_std, gamma, beta).reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        need_x, need_gamma, need_beta = ctx.needs_input_grad
        c = ctx.x.shape[-1]
        g2 = g.reshape(-1, c)
        dx = (g * (ctx.gamma * ctx.inv_std)).astype(np.float32) if need_x else None
        dgamma = ((g2 * ((ctx.x.reshape(-1, c) - ctx.mean) * ctx.inv_std)).sum(axis=0)
                  if need_gamma else None)
        dbeta = g2.sum(axis=0) if need_beta else None
        return dx, dgamma, dbeta


class BatchNormalization(Layer):
    """Batch normalisation, as ``keras.layers.BatchNormalization`` (axis -1).

    Training: normalise with the batch's mean and (biased) variance, then update
    ``moving = momentum * moving + (1 - momentum) * batch``. Inference: normalise with
    the moving averages, an affine map.

    Input (N, ..., C) -> output of the same shape. Weights: ``gamma``, ``beta``
    (trainable), ``moving_mean``, ``moving_variance`` (not trainable), each (C,).
    """

    def __init__(self, momentum=0.99, epsilon=1e-3, name=None):
        super().__init__(name)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNormalization: momentum must be in [0, 1], got {momentum}")
        if epsilon <= 0:
            raise ValueError(f"BatchNormalization: epsilon must be positive, got {epsilon}")
        self.momentum, self.epsilon = float(momentum), float(epsilon)

    def build(self, input_shape, rng):
        c = input_shape[-1]
        self.gamma = self.add_weight("gamma", np.ones(c, np.float32))
        self.beta = self.add_weight("beta", np.zeros(c, np.float32))
        self.moving_mean = self.add_weight("moving_mean", np.zeros(c, np.float32), trainable=False)
        self.moving_variance = self.add_weight("moving_variance", np.ones(c, np.float32), trainable=False)

    def call(self, x, training):
        if training:
            return self._train(BatchNormFn, x)
        inv_std = (1.0 / np.sqrt(self.moving_variance.data + self.epsilon)).astype(np.float32)
        return BatchNormInferenceFn.apply(x, self.gamma, self.beta, mean=self.moving_mean.data, inv_std=inv_std)

    def _train(self, fn, x):
        """Normalise with the batch's statistics (``fn`` with or without the ReLU after it)
        and move the moving averages towards them."""
        self.check_training_batch(x)
        stats = {}
        y = fn.apply(x, self.gamma, self.beta, eps=self.epsilon, stats=stats)
        self.update_moving_averages(stats)
        return y

    def check_training_batch(self, x):
        """Raise unless x (this layer's input, or the input of a layer fused before it)
        holds a value: the statistics of nothing are NaN, and would stay in the moving
        averages."""
        if x.size == 0:
            raise ValueError(f"{self._label()}: a training batch needs at least one value per channel, "
                             f"got input shape {x.shape}")

    def update_moving_averages(self, stats):
        """moving = momentum * moving + (1 - momentum) * batch, for the batch ``stats``
        (mean and var) a training forward reported."""
        m = self.momentum
        self.moving_mean.data = m * self.moving_mean.data + (1 - m) * stats["mean"]
        self.moving_variance.data = m * self.moving_variance.data + (1 - m) * stats["var"]
