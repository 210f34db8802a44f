"""The fast versions of optim.py's functions, with the same signatures; read optim.py first.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..backend import PARALLEL, threads_by_size


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
