"""Checks of tinycnn/tensor.py that its mutation run (tests/mutation/run.sh) showed missing:
gradients that stay float32 whatever the upstream dtype, accumulation into a leaf,
graphs where a leaf sits between interior nodes, constants that get no gradient, a
Function whose backward returns a bare array, the default of ``is_grad_enabled`` in a
fresh thread, log-softmax on logits far apart, and the messages."""
import threading

import numpy as np
import pytest

import tinycnn as tc
from tinycnn import Tensor
from tinycnn.tensor import Context, Function, Sum, _topological_order, is_grad_enabled


def test_gradients_are_enabled_in_a_fresh_thread():
    seen = []
    with tc.no_grad():
        thread = threading.Thread(target=lambda: seen.append(is_grad_enabled()))
        thread.start()
        thread.join()
    assert seen == [True]


def test_a_fresh_context_and_tensor():
    ctx = Context()
    assert (ctx.function, ctx.inputs, ctx.needs_input_grad) == (None, (), ())
    t = Tensor(np.arange(3, dtype=np.float64), name="w")
    assert t.version == 0 and t.dtype == np.float32 and t.name == "w"
    assert repr(t) == "Tensor(shape=(3,), requires_grad=False, name='w')"
    u = Tensor(t)
    np.testing.assert_array_equal(u.data, [0.0, 1.0, 2.0])
    assert Tensor([1, 2]).dtype == np.float32


def test_gradients_stay_float32_and_accumulate_into_a_leaf():
    a = Tensor(np.ones((2, 3)), requires_grad=True)
    (a * 2.0).sum().backward()
    assert a.grad.dtype == np.float32
    (a.mean() * 3.0).backward()                    # Mean's backward, accumulated onto Sum's
    assert a.grad.dtype == np.float32
    np.testing.assert_allclose(a.grad, np.full((2, 3), 2.0 + 0.5), rtol=1e-6)
    b = Tensor(np.ones(2), requires_grad=True)
    b.grad = np.ones(2, np.float32)
    b.backward(np.array([2.0, 3.0]))               # a float64 upstream gradient, added to b's own
    assert b.grad.dtype == np.float32
    np.testing.assert_array_equal(b.grad, [3.0, 4.0])
    c = Tensor(np.ones((1, 1)), requires_grad=True)
    (c * 5.0).backward()                           # a (1, 1) output needs no gradient either
    np.testing.assert_array_equal(c.grad, [[5.0]])


def test_every_input_gets_its_gradient_with_leaves_between_interior_nodes():
    rng = np.random.default_rng(0)
    a, b, c, d = (Tensor(rng.normal(size=3), requires_grad=True) for _ in range(4))
    k = Tensor(rng.normal(size=3))                 # a constant: no gradient for it
    out = ((a * b) + c) * d + k * a
    out.backward(np.ones(3, np.float32))
    np.testing.assert_allclose(a.grad, b.data * d.data + k.data, rtol=1e-6)
    np.testing.assert_allclose(b.grad, a.data * d.data, rtol=1e-6)
    np.testing.assert_allclose(c.grad, d.data, rtol=1e-6)
    np.testing.assert_allclose(d.grad, a.data * b.data + c.data, rtol=1e-6)
    assert k.grad is None
    const = Tensor(np.ones(3))
    (a + const).sum().backward()                   # Add returns a gradient for both inputs
    assert const.grad is None


def test_topological_order_holds_each_node_once_and_no_constant():
    x = Tensor(np.ones(2), requires_grad=True)
    k = Tensor(np.ones(2))
    y = x
    for _ in range(4):                             # diamonds: y + y, four deep
        y = y * k + y
    order = _topological_order(y)
    assert len(order) == len({id(n) for n in order}) == 1 + 4 * 2
    assert all(n is not k for n in order)
    y.backward(np.ones(2, np.float32))
    np.testing.assert_allclose(x.grad, [16.0, 16.0])


class Twice(Function):
    """2x, with a backward that returns a bare array, not a tuple."""

    @staticmethod
    def forward(ctx, a):
        return 2 * a

    @staticmethod
    def backward(ctx, g):
        return 2 * g


class WrongShape(Function):
    @staticmethod
    def forward(ctx, a):
        return a.copy()

    @staticmethod
    def backward(ctx, g):
        return (g[:1],)


def test_a_bare_array_from_backward_and_a_wrong_shape():
    a = Tensor(np.ones(3), requires_grad=True)
    Twice.apply(a).backward(np.ones(3, np.float32))
    np.testing.assert_array_equal(a.grad, [2.0, 2.0, 2.0])
    with pytest.raises(RuntimeError, match=r"^WrongShape\.backward returned a gradient of shape \(1,\) for an "
                                           r"input of shape \(3,\)$"):
        WrongShape.apply(a).backward(np.ones(3, np.float32))


def test_messages():
    with pytest.raises(ValueError, match=r"^backward\(\) without a gradient needs a scalar, got shape \(2,\); "
                                         r"pass grad= of that shape$"):
        Tensor(np.ones(2), requires_grad=True).backward()
    x = Tensor(np.ones(2), requires_grad=True)
    y = x * 2.0
    z = y.sum()
    z.backward()
    with pytest.raises(RuntimeError, match=r"^backward\(\) reached a tensor of shape \(\) whose graph an earlier "
                                           r"backward\(\) freed; call backward once per forward \(e\.g\. on the "
                                           r"sum of the losses\)$"):
        z.backward()
    with pytest.raises(ValueError, match=r"^Add: .* \(inputs of shape \(2, 3\), \(4,\)\)$"):
        Tensor(np.ones((2, 3))) + Tensor(np.ones(4))
    with pytest.raises(ValueError, match=r"^MatMul: operands must be matrices \(\.\.\., m, k\) @ \(k, n\), got "
                                         r"\(3,\) @ \(3, 2\); reshape a vector to \(1, k\) or \(k, 1\) "):
        Tensor(np.ones(3)) @ Tensor(np.ones((3, 2)))


def test_reshape_to_one_size_and_sum_without_keepdims():
    t = Tensor(np.arange(6).reshape(2, 3), requires_grad=True)
    assert t.reshape(6).shape == (6,) and t.reshape((3, 2)).shape == (3, 2)
    assert Sum.apply(t, axis=0).shape == (3,)
    assert tc.tensor.Mean.apply(t, axis=1).shape == (2,)


def test_broadcasting_over_an_axis_of_two():
    a = Tensor(np.ones((2, 3)), requires_grad=True)
    b = Tensor(np.ones((1, 3)), requires_grad=True)
    (a * b).backward(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(b.grad, [[3.0, 5.0, 7.0]])


def test_log_softmax_of_logits_far_apart():
    """Shifting by each row's own maximum: rows of very different scales, and large logits."""
    x = np.array([[1000.0, 999.0], [0.0, -1.0]], np.float32)
    expected = np.array([[0.0, -1.0], [0.0, -1.0]]) - np.log1p(np.exp(-1.0))
    np.testing.assert_allclose(tc.log_softmax(Tensor(x)).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(tc.softmax(Tensor(x)).numpy(), np.exp(expected), rtol=1e-6)


def test_item_and_repr():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # no deprecated conversion of an array with ndim > 0
        assert Tensor(2.5).item() == 2.5 and Tensor([[3.5]]).item() == 3.5 and Tensor([-1.0]).item() == -1.0
    for size in (2, 3):
        with pytest.raises(TypeError, match="arrays can be converted to Python scalars"):
            Tensor(np.ones(size)).item()
    assert repr(Tensor(np.ones((2, 1)), requires_grad=True)) == "Tensor(shape=(2, 1), requires_grad=True)"


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_reduction_gradients_are_plain_c_contiguous_arrays(reduce):
    """The reduced axis broadcast back is a C-contiguous copy (the compiled kernels and the
    optimisers' in-place updates take C-contiguous arrays), not a strided or read-only view."""
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    getattr(x, reduce)(axis=0).backward(np.array([1.0, 2.0, 3.0], np.float32))
    assert x.grad.flags.c_contiguous and x.grad.flags.writeable and x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, np.array([[1.0, 2.0, 3.0]] * 2) / (2 if reduce == "mean" else 1))


def test_an_input_used_twice_by_one_op_is_ordered_once():
    x = Tensor(np.ones(2), requires_grad=True)
    y = x * x                                      # Mul's inputs: (x, x)
    assert len(_topological_order(y)) == 2
    y.backward(np.ones(2, np.float32))
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])
