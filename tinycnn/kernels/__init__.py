"""Array kernels: each heavy op as a readable NumPy reference and a Numba version.

The functions here take and return plain float32 NHWC arrays; the layers in
``tinycnn.layers`` do the bookkeeping (parameters, saving for backward, gradients).
Each kernel module comes as two files with the same signatures: ``conv.py`` holds the
maths (the ``*_reference`` functions) and ``conv_fast.py`` the Numba kernels and the
fast drivers (``*_fast``), and so on for every module. The readable file binds the two
at its bottom: each public kernel dispatches on ``tinycnn.backend`` and exposes both
implementations as ``.reference`` and ``.fast`` for the tests. (Winograd's two are bound
in ``conv.py``, which chooses between it and the direct convolution.)
"""
