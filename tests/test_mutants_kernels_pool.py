"""Checks of tinycnn/kernels/pool.py that its mutation run (tests/mutation/run.sh) showed
missing: both kernels of each pooling return float32 (global average pooling even of a
float64 input), and the average pool's gradient is a C-contiguous array, not a view in
the broadcast's order."""
import numpy as np
import pytest

from tinycnn.kernels.pool import global_average_pool, global_average_pool_grad, maxpool, maxpool_grad


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_the_max_pool_gradient_is_float32(impl):
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)
    pads = ((0, 0), (0, 0))
    _, argmax = getattr(maxpool, impl)(x, (2, 2), (2, 2), pads, (2, 2))
    dy = np.random.default_rng(1).standard_normal((2, 2, 2, 3)).astype(np.float32)
    dx = getattr(maxpool_grad, impl)(dy, argmax, x.shape, (2, 2), (2, 2), pads)
    assert dx.dtype == np.float32 and dx.shape == x.shape
    np.testing.assert_allclose(dx.sum(axis=(1, 2)), dy.sum(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_global_average_pooling_is_float32_and_its_gradient_c_contiguous(impl):
    x = np.random.default_rng(2).standard_normal((2, 4, 5, 3))          # float64
    y = getattr(global_average_pool, impl)(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x.mean(axis=(1, 2)), rtol=1e-5)
    dy = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    dx = getattr(global_average_pool_grad, impl)(dy, x.shape)
    assert dx.dtype == np.float32 and dx.flags.c_contiguous and dx.shape == x.shape
    np.testing.assert_allclose(dx, np.broadcast_to(dy[:, None, None, :] / 20, x.shape), rtol=1e-6)
