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
from numba import njit, prange

from ..backend import PARALLEL, dispatch, threads_by_size


def adam_update_reference(value, grad, m, v, beta_1, beta_2, lr_t, epsilon):
    """In place: the slots m, v and then the parameter ``value`` (all the same shape)."""
    m += np.float32(1 - beta_1) * (grad - m)
    v += np.float32(1 - beta_2) * (grad * grad - v)
    value -= np.float32(lr_t) * m / (np.sqrt(v) + np.float32(epsilon))


@njit(parallel=PARALLEL, cache=True)
def _adam(value, grad, m, v, a, b, lr_t, epsilon):
    for i in prange(value.shape[0]):
        g = grad[i]
        mi = m[i] + a * (g - m[i])
        vi = v[i] + b * (g * g - v[i])
        m[i] = mi
        v[i] = vi
        value[i] -= lr_t * mi / (np.sqrt(vi) + epsilon)


@threads_by_size
def adam_update_fast(value, grad, m, v, beta_1, beta_2, lr_t, epsilon):
    arrays = (value, grad, m, v)
    if not all(a.shape == value.shape and a.dtype == np.float32 and a.flags.c_contiguous for a in arrays):
        raise ValueError("adam_update: parameter, gradient and slots must be C-contiguous float32 arrays of one "
                         f"shape, got {[(a.shape, str(a.dtype), a.flags.c_contiguous) for a in arrays]}")
    f32 = np.float32
    _adam(value.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1), f32(1 - beta_1), f32(1 - beta_2),
          f32(lr_t), f32(epsilon))


adam_update = dispatch(adam_update_reference, adam_update_fast)
