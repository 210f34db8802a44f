"""Losses, computed from logits."""
from __future__ import annotations

import numpy as np

from .tensor import Function, _log_softmax, as_tensor


class SoftmaxCrossEntropyFn(Function):
    """Mean categorical cross-entropy of softmax(logits) against (smoothed) one-hot targets.

    logits (N, K), targets (N, K) rows summing to 1, weights (N,) -> scalar

        loss = sum_n w_n * (-sum_k t_nk * log_softmax(logits)_nk) / N

    Dividing by N (not by sum w) is what Keras does with ``class_weight``.
    The gradient is the well-known ``(softmax - t) * w / N``: no division by a
    probability, so it stays finite where a separate log(softmax) could overflow.
    Saved: softmax (N, K), targets, weights.
    """

    @staticmethod
    def forward(ctx, logits, targets, weights):
        logp = _log_softmax(logits, axis=1)
        ctx.save(probs=np.exp(logp), targets=targets, weights=weights)
        return np.float32(-(weights * (targets * logp).sum(axis=1)).sum() / len(logits))

    @staticmethod
    def backward(ctx, g):
        n = len(ctx.targets)
        dlogits = (ctx.probs - ctx.targets) * (ctx.weights[:, None] * (g / n))
        return dlogits.astype(np.float32), None, None


def softmax_cross_entropy(logits, labels, class_weights=None, label_smoothing=0.0):
    """Cross-entropy loss from unnormalised scores.

    Args:
        logits: Tensor (N, K).
        labels: integer class indices (N,), or target probabilities (N, K) whose rows
            sum to 1 (soft labels, e.g. a teacher ensemble's predictions when
            distilling; Keras' categorical cross-entropy).
        class_weights: optional (K,) weight per class (see ``balanced_class_weights``);
            with soft labels an example is weighted by its most probable class.
        label_smoothing: ``eps`` in [0, 1): targets become ``(1 - eps) * t + eps / K``
            with ``t`` the one-hot (or given soft) targets.
    Returns:
        A scalar Tensor.
    """
    logits = as_tensor(logits)
    if logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy: logits must be (batch, classes), got {logits.shape}")
    n, k = logits.shape
    if n == 0:
        raise ValueError(f"softmax_cross_entropy: a batch of 0 examples has no loss (logits {logits.shape})")
    if not np.isfinite(logits.data).all():   # a diverged model: say so rather than return NaN
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(logits.data))[0])
        raise ValueError(f"softmax_cross_entropy: logits {logits.shape} hold NaN or inf, first at {bad}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"softmax_cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    targets = target_probabilities(labels, n, k, "softmax_cross_entropy")
    hard = targets.argmax(axis=1)
    targets = (targets * np.float32(1.0 - label_smoothing) + np.float32(label_smoothing / k)).astype(np.float32)
    if class_weights is None:
        weights = np.ones(n, np.float32)
    else:
        class_weights = np.asarray(class_weights, np.float32)
        if class_weights.shape != (k,):
            raise ValueError(f"softmax_cross_entropy: class_weights must have shape ({k},), "
                             f"got {class_weights.shape}")
        weights = class_weights[hard]
    return SoftmaxCrossEntropyFn.apply(logits, targets, weights)


def target_probabilities(labels, n, k, who) -> np.ndarray:
    """Integer labels (n,) as one-hot rows, or soft targets (n, k) checked -> float32 (n, k)."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and np.issubdtype(labels.dtype, np.floating):
        if labels.shape != (n, k):
            raise ValueError(f"{who}: soft targets must have shape ({n}, {k}) for logits ({n}, {k}), "
                             f"got {labels.shape}")
        if not np.isfinite(labels).all() or labels.min() < 0 or np.abs(labels.sum(axis=1) - 1).max() > 1e-3:
            raise ValueError(f"{who}: soft targets must be probabilities (non-negative rows summing to 1)")
        return labels.astype(np.float32)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{who}: labels must be {n} integers (or ({n}, {k}) probabilities) for logits "
                         f"({n}, {k}), got dtype {labels.dtype} shape {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"{who}: labels must lie in [0, {k}), got range [{labels.min()}, {labels.max()}]")
    onehot = np.zeros((n, k), np.float32)
    onehot[np.arange(n), labels] = 1.0
    return onehot


def balanced_class_weights(labels, num_classes):
    """n_samples / (n_classes * count_c), as scikit-learn's ``compute_class_weight('balanced')``.

    A class absent from ``labels`` gets weight 0 (it can never be seen).
    """
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = len(labels) / (num_classes * counts[present])
    return weights.astype(np.float32)
