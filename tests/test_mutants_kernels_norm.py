"""Checks of tinycnn/kernels/norm.py that its mutation run (tests/mutation/run.sh) showed
missing: every BatchNorm kernel, on both paths, hands back float32 arrays (outputs,
statistics, gradients), and the epilogue's forward writes y = relu(z + b) into z itself,
as its docstring says, on the reference path too."""
import numpy as np
import pytest

from tinycnn.kernels import norm


def problem(seed=0, m=12, c=3):
    rng = np.random.default_rng(seed)
    x2 = (rng.standard_normal((m, c)) * 2 + 0.5).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    g2 = rng.standard_normal((m, c)).astype(np.float32)
    return x2, gamma, beta, g2


def all_float32(arrays):
    return [np.asarray(a).dtype for a in arrays if np.asarray(a).dtype != np.float32]


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_batchnorm_kernels_hand_back_float32(impl):
    x2, gamma, beta, g2 = problem()
    forward = getattr(norm.batchnorm_forward, impl)(x2, gamma, beta, 1e-3)
    assert all_float32(forward) == [], "batchnorm_forward (y2, mean, var, inv_std)"
    _, mean, var, inv_std = forward
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(x2.astype(np.float64).var(axis=0) + 1e-3), rtol=1e-5)
    assert all_float32(getattr(norm.batchnorm_backward, impl)(g2, x2, mean, gamma, inv_std)) == []
    assert all_float32(getattr(norm.batchnorm_relu_forward, impl)(x2, gamma, beta, 1e-3)) == []
    y = getattr(norm.batchnorm_inference, impl)(x2, mean, inv_std, gamma, beta)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, forward[0], rtol=1e-5, atol=1e-5)    # the batch's own statistics


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_the_epilogue_overwrites_z_with_y(impl):
    z2, gamma, beta, _ = problem(seed=1)
    b = np.array([0.5, -0.5, 0.0], np.float32)
    expected = np.maximum(z2 + b, 0)
    out = getattr(norm.bias_relu_batchnorm_forward, impl)(z2, b, gamma, beta, 1e-3)
    assert out[1] is z2 or np.shares_memory(out[1], z2)
    np.testing.assert_allclose(z2, expected, rtol=1e-6, atol=1e-7)
    assert all_float32(out) == []
