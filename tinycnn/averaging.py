"""Averaging whole networks: the mean of several networks' weights, and BatchNorm's
statistics computed afresh for it.

A *model soup* (Wortsman et al., 2022) is one network whose every weight is the mean of
the same weight in several networks fine-tuned from one starting point. It costs one
forward pass, like each of them, yet is often more accurate than the best of them: the
fine-tuned networks lie in one basin of the loss, and its middle is lower than its rim.
Networks trained apart from different starting points do not share a basin (nor an
order of their channels), and their mean is noise.

The mean of the BatchNorm layers' moving statistics is not the statistics of the mean
network's activations; ``update_batchnorm`` measures those, as
``torch.optim.swa_utils.update_bn`` does for stochastic weight averaging.
"""
from __future__ import annotations

import numpy as np

from .layers.normalization import BatchNormalization
from .tensor import no_grad


def average_weights(models) -> dict[str, np.ndarray]:
    """The mean of each weight over ``models`` (Sequentials of one architecture):
    ``{name: array}``, as ``Sequential.get_weights`` gives and ``set_weights`` takes.

    Every weight, trainable or not (BatchNorm's moving mean and variance too), is
    averaged in float64 and stored in the first model's dtype. Raises ``ValueError``
    naming the models and the weight where the networks differ in their weights' names
    or shapes.
    """
    models = list(models)
    if not models:
        raise ValueError("average_weights: needs at least one model")
    weights = [m.get_weights() for m in models]
    first, name0 = weights[0], models[0].name
    for m, w in zip(models[1:], weights[1:]):
        if w.keys() != first.keys():
            differ = sorted(w.keys() ^ first.keys())
            raise ValueError(f"average_weights: '{m.name}' and '{name0}' are not one architecture "
                             f"(weights {differ[:3]} are in only one of them)")
        for k, a in first.items():
            if w[k].shape != a.shape:
                raise ValueError(f"average_weights: weight {k!r} has shape {w[k].shape} in '{m.name}' and "
                                 f"{a.shape} in '{name0}'")
    return {k: np.mean([w[k].astype(np.float64) for w in weights], axis=0).astype(a.dtype)
            for k, a in first.items()}


def update_batchnorm(model, x, batch_size=128, prepare=None) -> int:
    """Replace every BatchNormalization layer's moving mean and variance by the mean of
    the batch statistics that a training-mode forward pass over ``x`` measures.

    Args:
        model: a built ``Sequential``; its other weights are left as they are.
        x: examples (N, ...), read in order, ``batch_size`` at a time: shuffle them
            first, as training does, where similar examples lie together (a batch's
            variance is measured around its own mean, so batches of one class each
            would leave a smaller variance than training's batches saw).
        prepare: a function mapping a slice of ``x`` to the model's input (e.g. a
            preprocessing); default: the slice itself.

    For the k-th batch (k = 0, 1, ...) each layer's momentum is k / (k + 1), so that
    ``moving = momentum * moving + (1 - momentum) * batch`` leaves the running mean of
    all the batches' statistics; the momenta are restored afterwards. The forward passes
    run in training mode (each BatchNorm normalises with its batch, as in training) and
    without gradients. Returns the number of BatchNorm layers updated (0: nothing to do).
    """
    layers = [layer for layer in model.all_layers() if isinstance(layer, BatchNormalization)]
    if not layers:
        return 0
    if len(x) == 0:
        raise ValueError(f"update_batchnorm: '{model.name}' needs examples to measure its BatchNorm "
                         f"statistics on, got x of shape {np.shape(x)}")
    if batch_size < 1:
        raise ValueError(f"update_batchnorm: batch_size must be positive, got {batch_size}")
    momenta = [layer.momentum for layer in layers]
    try:
        with no_grad():
            for k, start in enumerate(range(0, len(x), batch_size)):
                for layer in layers:
                    layer.momentum = k / (k + 1)
                batch = x[start:start + batch_size]
                model(prepare(batch) if prepare else batch, training=True)
    finally:
        for layer, m in zip(layers, momenta):
            layer.momentum = m
    return len(layers)
