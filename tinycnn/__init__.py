"""tinycnn: a small, readable deep-learning library in NumPy with Numba kernels.

    import tinycnn as tc
    model = tc.Sequential([tc.layers.Conv2D(32, 3, padding="same", activation="relu"),
                           tc.layers.MaxPool2D(), tc.layers.GlobalAveragePooling2D(),
                           tc.layers.Dense(7)])
    opt = tc.optim.Adam(model.parameters(), lr=1e-3)
    logits = model(x, training=True)
    loss = tc.losses.softmax_cross_entropy(logits, y)
    opt.zero_grad(); loss.backward(); opt.step()
"""
import os as _os

# Before Numba starts its OpenMP threads: idle, they sleep instead of spinning, so that
# they leave the cores to BLAS between two parallel kernels (``tinycnn/backend.py``).
# A value already set is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import averaging, callbacks, initializers, layers, losses, optim  # noqa: E402
from .backend import (get_backend, get_conv_algorithm, set_backend, set_conv_algorithm, use_backend,  # noqa: E402
                      use_conv_algorithm)
from .model import Sequential  # noqa: E402
from .tensor import Function, Tensor, log_softmax, no_grad, relu, softmax  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Tensor", "Function", "no_grad", "Sequential", "layers", "losses", "optim", "callbacks",
           "averaging", "initializers", "softmax", "log_softmax", "relu", "get_backend", "set_backend",
           "use_backend", "get_conv_algorithm", "set_conv_algorithm", "use_conv_algorithm"]
