"""Checks of tinycnn/callbacks.py that its mutation run (tests/mutation/run.sh) showed
missing: SwapEMAWeights' default (validation only, as Keras') and its refusal of an
optimiser without a moving average, by name, whatever the object."""
import numpy as np
import pytest

import tinycnn as tc
from tinycnn import Tensor


def test_swap_ema_weights_defaults_to_validation_only_and_names_an_optimiser_without_an_average():
    """``__init____mutmut_1`` (swap_on_epoch=True by default), ``_5``, ``_8``, ``_11`` (an
    object without ``use_ema`` let through, or an AttributeError) and ``_13`` (the type unnamed)."""
    p = [Tensor(np.ones(2, np.float32), requires_grad=True)]
    callback = tc.callbacks.SwapEMAWeights(tc.optim.SGD(p, use_ema=True))
    assert callback.swap_on_epoch is False and callback.averaged_in_model is False
    for optimizer, name in [(tc.optim.SGD(p), "SGD"), (object(), "object")]:
        with pytest.raises(ValueError, match=rf"^SwapEMAWeights: the optimiser \({name}\) keeps no moving average; "
                                             r"make it with use_ema=True$"):
            tc.callbacks.SwapEMAWeights(optimizer)
