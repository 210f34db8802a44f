"""Checks of tinycnn/kernels/activation.py that its mutation run (tests/mutation/run.sh)
showed missing: the reference ReLU gradient is float32, as its docstring says, whatever
the dtype of the upstream gradient."""
import numpy as np

from tinycnn.kernels.activation import relu_grad


def test_the_reference_relu_gradient_is_float32():
    y = np.array([[0.0, 1.5], [2.0, 0.0]], np.float32)
    for dtype in (np.float32, np.float64):
        g = np.array([[1.0, -2.0], [3.0, 4.0]], dtype)
        dx = relu_grad.reference(g, y)
        assert dx.dtype == np.float32, dtype
        np.testing.assert_array_equal(dx, [[0.0, -2.0], [3.0, 0.0]])
