"""Dropout kernels: the mask applied forward, and again to the gradient.

Shapes: ``x``, ``u`` and ``keep`` all (any shape, the same). ``u`` holds uniform draws
in [0, 1), one per value (the layer draws them from its seeded generator); a value is
kept where ``u >= rate`` and then scaled by 1 / (1 - rate) ("inverted" dropout, as
Keras: the expected output equals the input, so inference is the identity):

    y = x / (1 - rate)  where u >= rate,  else 0
    dL/dx = g / (1 - rate)  where kept,  else 0

The mask is saved as booleans (one byte a value, not a float32 mask's four). The fast
kernels do each formula in one pass over the arrays, on all cores.
"""
from __future__ import annotations

import numpy as np

from ..backend import dispatch


def dropout_reference(x, u, rate):
    """(y, keep): x with the values where u < rate zeroed and the rest scaled by 1/(1-rate)."""
    keep = u >= rate
    scale = x.dtype.type(1.0 / (1.0 - rate))
    return np.where(keep, x * scale, x.dtype.type(0)), keep


def dropout_grad_reference(g, keep, rate):
    """dL/dx from g = dL/dy: the same mask and scale."""
    scale = g.dtype.type(1.0 / (1.0 - rate))
    return np.where(keep, g * scale, g.dtype.type(0))


# -- the fast versions (``dropout_fast.py``), bound to the names the layers call --------------------
from .dropout_fast import dropout_fast, dropout_grad_fast  # noqa: E402

dropout = dispatch(dropout_reference, dropout_fast)
dropout_grad = dispatch(dropout_grad_reference, dropout_grad_fast)
