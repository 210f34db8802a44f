"""Checks of tinycnn/kernels/depthwise.py that its mutation run (tests/mutation/run.sh)
showed missing: the reference kernels compute in their inputs' common precision (float32
from float32, float64 as soon as one input is float64, as the float64 checks use them)."""
import numpy as np
import pytest

from tinycnn.kernels import depthwise as D, depthwise_fast as DF

F32, F64 = np.float32, np.float64


def problem():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 5, 6, 3)), rng.standard_normal((3, 2, 3, 2))
    strides, pads = (1, 2), ((1, 1), (0, 1))
    dy = rng.standard_normal(D.depthwise_conv2d_output_shape(x.shape, w.shape, strides, pads))
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


def refusal(*args, **arrays):
    with pytest.raises(ValueError) as e:
        DF.check_arrays("depthwise_conv2d", *args, **arrays)
    return str(e.value)


def test_the_gate_names_each_problem_in_full():
    none = ((0, 0), (0, 0))
    tail = " (input {}, depthwise kernel {})"
    assert refusal((5, 5, 1), (3, 3, 1, 1), (1, 1), none) == "depthwise_conv2d: input and depthwise kernel must be " \
        "4-D (N, H, W, C) and (KH, KW, C, M)" + tail.format((5, 5, 1), (3, 3, 1, 1))
    assert refusal((1, 5, 5, 2), (3, 3, 2, 0), (1, 1), none) == "depthwise_conv2d: the depthwise kernel has an empty " \
        "axis" + tail.format((1, 5, 5, 2), (3, 3, 2, 0))
    for x_shape in [(1, 2, 5, 1), (1, 5, 2, 1)]:          # too short, too narrow
        assert refusal(x_shape, (3, 3, 1, 1), (1, 1), none) == "depthwise_conv2d: the kernel is larger than the " \
            "padded input" + tail.format(x_shape, (3, 3, 1, 1))
    x64, w64 = np.zeros((1, 5, 5, 1)), np.zeros((3, 3, 1, 1))
    assert refusal(x64.shape, w64.shape, (1, 1), none, x=x64, w=w64) == "depthwise_conv2d: the compiled kernel " \
        "takes float32 arrays, got x float64, w float64" + tail.format((1, 5, 5, 1), (3, 3, 1, 1))
    DF.check_arrays("depthwise_conv2d", (1, 3, 3, 1), (3, 3, 1, 2), (1, 1), none, (1, 1, 1, 2),
                   x=x64.astype(F32), w=w64.astype(F32))   # a kernel the size of the input: accepted
