"""Array kernels: each heavy op as a readable NumPy reference and a Numba version.

The functions here take and return plain float32 NHWC arrays; the layers in
``tinycnn.layers`` do the bookkeeping (parameters, saving for backward, gradients).
Each public kernel dispatches on ``tinycnn.backend`` and exposes both
implementations as ``.reference`` and ``.fast`` for the tests.
"""
