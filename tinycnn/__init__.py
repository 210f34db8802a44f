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
from . import initializers, layers, losses, optim
from .backend import (get_backend, get_conv_algorithm, set_backend, set_conv_algorithm, use_backend,
                      use_conv_algorithm)
from .model import Sequential
from .tensor import Function, Tensor, log_softmax, no_grad, relu, softmax

__version__ = "0.1.0"
__all__ = ["Tensor", "Function", "no_grad", "Sequential", "layers", "losses", "optim",
           "initializers", "softmax", "log_softmax", "relu", "get_backend", "set_backend",
           "use_backend", "get_conv_algorithm", "set_conv_algorithm", "use_conv_algorithm"]
