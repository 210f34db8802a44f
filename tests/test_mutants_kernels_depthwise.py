"""Checks of tinycnn/kernels/depthwise.py that its mutation run (tests/mutation/run.sh)
showed missing: the reference kernels compute in their inputs' common precision (float32
from float32, float64 as soon as one input is float64, as the float64 checks use them)."""
import numpy as np
import pytest

from tinycnn.kernels import depthwise as D

F32, F64 = np.float32, np.float64


def problem():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 5, 6, 3)), rng.standard_normal((3, 2, 3, 2))
    strides, pads = (1, 2), ((1, 1), (0, 1))
    dy = rng.standard_normal(D._output_shape(x.shape, w.shape, strides, pads))
    return x, w, dy, strides, pads


@pytest.mark.parametrize("first, second", [(F32, F32), (F64, F32), (F32, F64), (F64, F64)])
def test_reference_kernels_compute_in_their_inputs_precision(first, second):
    x, w, dy, strides, pads = problem()
    expected = np.result_type(first, second)
    calls = {"depthwise_conv2d": lambda a, b: D.depthwise_conv2d_reference(a, b, strides, pads),
             "depthwise_conv2d_grad_input": lambda a, b: D.depthwise_conv2d_grad_input_reference(a, b, x.shape,
                                                                                                 strides, pads),
             "depthwise_conv2d_grad_weight": lambda a, b: D.depthwise_conv2d_grad_weight_reference(a, b, w.shape,
                                                                                                   strides, pads)}
    inputs = {"depthwise_conv2d": (x, w), "depthwise_conv2d_grad_input": (dy, w),
              "depthwise_conv2d_grad_weight": (x, dy)}
    for name, call in calls.items():
        a, b = inputs[name]
        got = call(a.astype(first), b.astype(second))
        assert got.dtype == expected, f"{name}({first.__name__}, {second.__name__}) gave {got.dtype}"
        np.testing.assert_allclose(got, call(a, b), rtol=1e-4, atol=1e-5, err_msg=name)
