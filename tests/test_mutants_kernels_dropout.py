"""Checks of tinycnn/kernels/dropout.py that its mutation run (tests/mutation/run.sh)
showed missing: a draw equal to the rate keeps its value (kept where ``u >= rate``), on
both kernels."""
import numpy as np
import pytest

from tinycnn.kernels.dropout import dropout


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("rate", [0.25, 0.5])        # exact in float32 and float64: u == rate is a true tie
def test_a_draw_equal_to_the_rate_is_kept(impl, rate):
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    u = np.array([rate, np.nextafter(np.float32(rate), np.float32(0)), 0.0, 0.9], np.float32)
    y, keep = getattr(dropout, impl)(x, u, rate)
    np.testing.assert_array_equal(keep, [True, False, False, True])
    np.testing.assert_allclose(y, [1.0 / (1 - rate), 0.0, 0.0, 4.0 / (1 - rate)], rtol=1e-6)
