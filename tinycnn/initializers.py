"""Keras' default initialisers, drawn from an explicit ``numpy.random.Generator``."""
from __future__ import annotations

import numpy as np


def fans(shape):
    """(fan_in, fan_out) as Keras computes them: a conv kernel (KH, KW, I, O) counts
    KH*KW*I inputs and KH*KW*O outputs per unit."""
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


def glorot_uniform(shape, rng):
    """U(-l, l) with l = sqrt(6 / (fan_in + fan_out)): keeps activations' variance steady."""
    fan_in, fan_out = fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def he_uniform(shape, rng):
    """U(-l, l) with l = sqrt(6 / fan_in): the ReLU-aware variant."""
    fan_in, _ = fans(shape)
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def zeros(shape, rng=None):
    return np.zeros(shape, np.float32)


def ones(shape, rng=None):
    return np.ones(shape, np.float32)


_BY_NAME = {"glorot_uniform": glorot_uniform, "he_uniform": he_uniform, "zeros": zeros, "ones": ones}


def get(name_or_fn):
    if callable(name_or_fn):
        return name_or_fn
    try:
        return _BY_NAME[name_or_fn]
    except KeyError:
        raise ValueError(f"unknown initializer {name_or_fn!r}; known: {sorted(_BY_NAME)}") from None
