"""Checks of tinycnn/plan/fold.py that its mutation run (tests/mutation/run.sh) showed
missing after the folding moved into the plan package (``tests/test_mutants_fold.py``
holds the earlier ones): what ``run_layers`` runs for one image without gradients, and
inside a Residual's block and shortcut."""
from __future__ import annotations

import numpy as np
import pytest

import tinycnn as tc
from helpers import assert_close, one_by_one, random_weights
from tinycnn.layers import BatchNormalization, Conv2D, Dense, Flatten, Residual
from tinycnn.plan import fold

RTOL, ATOL = 1e-5, 1e-5


def test_one_image_keeps_the_batchnorm_in_the_relu_convolutions_epilogue(monkeypatch):
    """Conv2D(relu) -> BatchNormalization runs as one convolution with the normalisation in
    its epilogue at any batch size, one image included (it costs nothing extra, unlike
    folding): only the calls tell, the outputs are the same either way."""
    calls = []
    original = fold.conv_relu_batchnorm
    monkeypatch.setattr(fold, "conv_relu_batchnorm", lambda *a: calls.append(1) or original(*a))
    model = random_weights(tc.Sequential([Conv2D(3, 3, activation="relu"), BatchNormalization(epsilon=0.1),
                                          Flatten(), Dense(2)], input_shape=(5, 5, 2), seed=1), 1)
    x = np.random.default_rng(1).random((fold.FOLD_MIN_BATCH, 5, 5, 2), dtype=np.float32)
    for n in (1, 2, fold.FOLD_MIN_BATCH):
        calls.clear()
        expected = one_by_one(model, x[:n])
        with tc.no_grad():
            got = fold.run_layers(model.layers, tc.Tensor(x[:n]), False).numpy()
        assert calls == [1], f"{n} images: conv_relu_batchnorm called {len(calls)} times, expected once"
        assert_close(f"{n} images, the epilogue", "output", got, expected, RTOL, ATOL)


def two_path_residual(activation="relu"):
    """A Residual whose block and shortcut each hold both inference fusions: Conv2D(relu) ->
    BN (the epilogue) and Conv2D -> BN (folded from FOLD_MIN_BATCH images up)."""
    block = [Conv2D(4, 3, padding="same", activation="relu"), BatchNormalization(epsilon=0.1),
             Conv2D(4, 3, padding="same"), BatchNormalization(epsilon=0.2)]
    shortcut = [Conv2D(4, 1, activation="relu"), BatchNormalization(epsilon=0.3),
                Conv2D(4, 1), BatchNormalization(epsilon=0.05)]
    model = tc.Sequential([Residual(block, shortcut, activation=activation, name="res")], input_shape=(5, 5, 2),
                          seed=2)
    return random_weights(model, 3)


def by_its_own_call(model, x, training):
    """The Residual's own call: its layers one by one, nothing fused."""
    return model.layers[0](tc.Tensor(x), training=training).numpy()


def test_a_residuals_block_and_shortcut_each_run_both_inference_fusions(monkeypatch):
    """Inside a Residual, the block and the shortcut each take the epilogue at any batch
    size and the folding from FOLD_MIN_BATCH up; the calls tell, the outputs agree."""
    epilogue, folded = [], []
    original_epilogue, original_fold = fold.conv_relu_batchnorm, fold.folded_weights
    monkeypatch.setattr(fold, "conv_relu_batchnorm", lambda *a: epilogue.append(1) or original_epilogue(*a))
    monkeypatch.setattr(fold, "folded_weights", lambda *a: folded.append(1) or original_fold(*a))
    model = two_path_residual()
    x = np.random.default_rng(4).random((fold.FOLD_MIN_BATCH, 5, 5, 2), dtype=np.float32)
    for n in (1, 2, fold.FOLD_MIN_BATCH):
        expected = by_its_own_call(model, x[:n], False)
        epilogue.clear(), folded.clear()
        with tc.no_grad():
            got = fold.run_layers(model.layers, tc.Tensor(x[:n]), False).numpy()
        assert len(epilogue) == 2, f"{n} images: {len(epilogue)} epilogues, expected the block's and the shortcut's"
        assert len(folded) == (2 if n >= fold.FOLD_MIN_BATCH else 0), f"{n} images: {len(folded)} folds"
        assert_close(f"residual, {n} images", "output", got, expected, RTOL, ATOL)


def test_a_residuals_shortcut_runs_in_training_mode_in_training():
    """The shortcut's BatchNormalizations normalise with the batch's statistics in training,
    as the block's do: the fused run gives the Residual's own call."""
    model = two_path_residual()
    x = np.random.default_rng(5).random((4, 5, 5, 2), dtype=np.float32)
    expected = by_its_own_call(model, x, True)
    got = fold.run_layers(model.layers, tc.Tensor(x), True).numpy()
    assert_close("residual in training", "output", got, expected, RTOL, ATOL)
    assert not np.allclose(got, by_its_own_call(model, x, False), rtol=1e-3, atol=1e-3)


def test_a_linear_residual_keeps_its_negative_outputs():
    model = two_path_residual(activation="linear")
    x = np.random.default_rng(6).random((3, 5, 5, 2), dtype=np.float32)
    for training in (False, True):
        expected = by_its_own_call(model, x, training)
        assert (expected < -0.1).any(), "test bug: no clearly negative output"
        got = fold.run_layers(model.layers, tc.Tensor(x), training).numpy()
        assert_close(f"linear residual, training={training}", "output", got, expected, RTOL, ATOL)


def test_bad_input_to_a_residual_first_names_it():
    model = two_path_residual()
    with pytest.raises(ValueError, match=r"^Residual 'res': input must be a float array"):
        fold.run_layers(model.layers, np.ones((2, 5, 5, 2), np.int64), False)
