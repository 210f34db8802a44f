"""Optimiser updates, applied in place to one parameter array and its slots.

Adam (Kingma & Ba) in Keras' form, every array the parameter's shape, float32:

    m = m + (1 - beta_1) * (g - m);   v = v + (1 - beta_2) * (g*g - v)
    p = p - lr_t * m / (sqrt(v) + epsilon)

``lr_t`` (the rate with the bias correction of step t) is computed once per step by the
optimiser. NumPy evaluates these formulas as eight passes over the arrays, each with a
temporary; the Numba kernel does one pass, with the same float32 operations in the
same order (no fastmath), so both give the same bits.
"""
from __future__ import annotations

import numpy as np

from ..backend import dispatch


def adam_update_reference(value, grad, m, v, beta_1, beta_2, lr_t, epsilon):
    """In place: the slots m, v and then the parameter ``value`` (all the same shape)."""
    m += np.float32(1 - beta_1) * (grad - m)
    v += np.float32(1 - beta_2) * (grad * grad - v)
    value -= np.float32(lr_t) * m / (np.sqrt(v) + np.float32(epsilon))


# -- the fast versions (``optim_fast.py``), bound to the names the layers call --------------------
from .optim_fast import adam_update_fast  # noqa: E402

adam_update = dispatch(adam_update_reference, adam_update_fast)
