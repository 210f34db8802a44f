"""Autodiff semantics of ``Tensor.backward``: accumulation, upstream gradients, no_grad."""
from __future__ import annotations

import numpy as np
import pytest

import tinycnn as tc
from helpers import assert_close
from tinycnn import Tensor


def leaf(values):
    return Tensor(np.asarray(values, np.float32), requires_grad=True)


def test_tensor_used_twice_gets_the_sum(backend):
    """d(x*x)/dx = 2x: assigning instead of accumulating would give x."""
    x = leaf([1.5, -2.0, 3.0])
    (x * x).backward(np.ones(3, np.float32))
    assert_close("x * x", "x grad", x.grad, 2 * x.data)


def test_tensor_used_three_times(backend):
    x = leaf([1.5, -2.0, 0.5])
    y = x * x * x + x
    g = np.array([0.3, -1.1, 2.0], np.float32)
    y.backward(g)
    assert_close("x*x*x + x", "x grad", x.grad, g * (3 * x.data ** 2 + 1))


def test_diamond_graph(backend):
    """x -> a -> (b, c) -> d = b * c: a's gradient is complete only after both b and c."""
    x = leaf([0.5, -1.0, 2.0])
    a = x * 2.0
    b = a + 1.0
    c = a * 3.0
    d = b * c  # = 3a^2 + 3a, dd/dx = (6a + 3) * 2
    g = np.array([1.0, -0.5, 0.25], np.float32)
    d.backward(g)
    assert_close("diamond b*c", "x grad", x.grad, g * (6 * a.data + 3) * 2)


def test_diamond_through_layers(backend):
    """A residual connection: x reaches the output through a conv and directly."""
    rng = np.random.default_rng(0)
    conv = tc.layers.Conv2D(2, 1, use_bias=False)
    x = Tensor(rng.standard_normal((1, 2, 2, 2)), requires_grad=True)
    y = conv(x) + x
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    w = conv.kernel.data[0, 0]  # (C, O): y = x @ w + x, dy/dx = g @ w.T + g
    assert_close("conv(x) + x", "x grad", x.grad, g @ w.T + g)


def test_backward_with_upstream_gradient(backend):
    x = leaf(np.arange(6.0).reshape(2, 3))
    y = x * 3.0
    g = np.array([[1.0, 2.0, -1.0], [0.5, 0.0, 4.0]], np.float32)
    y.backward(g)
    assert_close("x * 3", "x grad", x.grad, 3 * g)


def test_scalar_backward_defaults_to_one(backend):
    x = leaf([1.0, 2.0])
    (x * x).sum().backward()
    assert_close("sum(x*x)", "x grad", x.grad, 2 * x.data)


def test_backward_from_non_scalar_without_gradient_raises(backend):
    y = leaf(np.ones((2, 3))) * 2.0
    with pytest.raises(ValueError, match=r"scalar.*\(2, 3\)"):
        y.backward()


def test_backward_with_wrong_shaped_gradient_raises(backend):
    y = leaf(np.ones((2, 3))) * 2.0
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        y.backward(np.ones((3, 2)))


def test_leaf_gradients_accumulate_across_backward_calls(backend):
    """As in Keras' manual loops and PyTorch: the optimiser's zero_grad clears them."""
    x = leaf([1.0, 2.0])
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    assert_close("two backward calls", "x grad", x.grad, 3 + 2 * x.data)
    opt = tc.optim.SGD([x], lr=0.1)
    opt.zero_grad()
    assert x.grad is None


def test_no_gradient_for_tensors_that_do_not_require_it(backend):
    x = leaf([1.0, 2.0])
    c = Tensor([3.0, 4.0])
    (x * c).sum().backward()
    assert c.grad is None
    assert_close("x * c", "x grad", x.grad, c.data)


def test_no_grad_records_nothing(backend):
    x = leaf([1.0, 2.0])
    conv = tc.layers.Conv2D(1, 1)
    with tc.no_grad():
        y = (x * x).sum()
        z = conv(np.ones((1, 2, 2, 1), np.float32))
    assert not y.requires_grad and y._ctx is None
    assert not z.requires_grad and z._ctx is None
    y.backward()  # y is a leaf now: no gradient reaches x or the layer's weights
    assert x.grad is None and conv.kernel.grad is None
    # and recording resumes after the block, also when the block raised
    with pytest.raises(RuntimeError):
        with tc.no_grad():
            raise RuntimeError("inside")
    w = x * x
    assert w.requires_grad and w._ctx is not None


def test_no_grad_nests(backend):
    with tc.no_grad():
        with tc.no_grad():
            pass
        assert not (leaf([1.0]) * 2.0).requires_grad
    assert (leaf([1.0]) * 2.0).requires_grad


def test_deep_chain_does_not_hit_recursion_limit(backend):
    x = leaf([1.0])
    y = x
    for _ in range(3000):
        y = y * 1.0
    y.backward(np.ones(1, np.float32))
    assert_close("3000 multiplications by 1", "x grad", x.grad, [1.0])


def test_second_backward_through_a_freed_graph_raises(backend):
    """backward() frees the graph as it goes. A second backward that needs a freed part
    (two losses sharing features, each with its own backward) must fail loudly, not
    silently drop the shared path's gradient."""
    x = leaf([1.0, 2.0])
    h = x * 2.0
    loss1 = (h * 3.0).sum()
    loss2 = (h * 4.0).sum()
    loss1.backward()
    with pytest.raises(RuntimeError, match="freed|second time"):
        loss2.backward()
    with pytest.raises(RuntimeError, match="freed"):
        loss1.backward()  # the same loss twice
    # the supported way: one backward of the sum
    x.grad = None
    h = x * 2.0
    ((h * 3.0).sum() + (h * 4.0).sum()).backward()
    assert_close("sum of two losses", "x grad", x.grad, [14.0, 14.0])
