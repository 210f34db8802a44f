"""The ReLU's gradient: ``dL/dx = g where y > 0, else 0`` (y = max(x, 0), the saved output).

Shapes: ``g`` and ``y`` the same (any shape). The forward needs no kernel of its own
(``np.maximum(x, 0)`` is one fast pass), but NumPy's ``np.where`` with a scalar runs this
one at a fraction of memory speed (measured on 64x48x48x32: 19.8 ms, against 3.0 for
``g * (y > 0)`` and 1.5 for the loop below), which made a standalone ReLU's backward a
quarter of a resfer training step.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import memory
from ..backend import PARALLEL, dispatch, threads_by_size


def relu_grad_reference(g, y):
    """dL/dx (float32, y's shape): g where y > 0, zero elsewhere."""
    return np.where(y > 0, g, np.float32(0)).astype(np.float32)


# No fastmath: it lets LLVM assume no NaN, and ``y > 0`` then held for a NaN output, which
# passed g back where NumPy passes 0 (found by the fuzz tests' relu on a NaN input). A
# select per element gains nothing from it (64x48x48x32: 3.0-5.4 ms with or without, on
# a busy 2-core machine).
@njit(parallel=PARALLEL, cache=True)
def _relu_grad(g1, y1, out):
    for i in prange(g1.shape[0]):
        out[i] = g1[i] if y1[i] > 0 else 0.0


@threads_by_size
def relu_grad_fast(g, y):
    if np.shape(g) != np.shape(y):
        raise ValueError(f"relu_grad: gradient {np.shape(g)} and output {np.shape(y)} must have the same shape")
    out = memory.empty(np.shape(y))
    _relu_grad(np.ascontiguousarray(g, np.float32).reshape(-1), np.ascontiguousarray(y, np.float32).reshape(-1),
               out.reshape(-1))
    return out


relu_grad = dispatch(relu_grad_reference, relu_grad_fast)
