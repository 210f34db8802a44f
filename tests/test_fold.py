"""BatchNormalization folded into the Conv2D/Dense before it, in inference: the same
outputs as the unfolded layers, never stale after the weights change, and only where
it applies (inference, no gradient recording, batches from FOLD_MIN_BATCH up)."""
from __future__ import annotations

import numpy as np
import pytest

import fer_models
import tinycnn as tc
from helpers import assert_close, random_array
from tinycnn.layers import (BatchNormalization, Conv2D, Dense, Flatten, GlobalAveragePooling2D, MaxPool2D, ReLU,
                            Residual, normalization)
from tinycnn.plan import fold
from tinycnn.plan import fused as fused_functions

RTOL, ATOL = 1e-5, 1e-5


def randomise_batchnorm(model, rng):
    """Moving statistics and gamma/beta away from their initial 0/1, so folding matters."""
    for layer in model.all_layers():
        if isinstance(layer, BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.data = rng.uniform(0.5, 1.5, c).astype(np.float32) * rng.choice([-1, 1], c).astype(np.float32)
            layer.beta.data = random_array(rng, (c,), 0.3)
            layer.moving_mean.data = random_array(rng, (c,), 0.3)
            layer.moving_variance.data = rng.uniform(0.2, 2.0, c).astype(np.float32)


def unfolded(model, x):
    """Inference with gradient recording on: nothing is folded."""
    return model(x, training=False).numpy()


def count_batchnorm_calls(monkeypatch):
    calls = []
    original = normalization.BatchNormInferenceFn.apply
    monkeypatch.setattr(normalization.BatchNormInferenceFn, "apply",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def fused_call(model, x):
    """``run_layers``' own fusions, in inference without gradients: what a model's call did
    before ``Sequential`` handed such calls to its inference copy (``test_inference_cache``),
    and what a block run by itself (a Residual's) still does."""
    with tc.no_grad():
        return fold.run_layers(model.layers, tc.Tensor(x), False)


@pytest.mark.parametrize("name, unfolded_left", [("resfer", 0), ("mini", 0), ("vggbn", 1), ("gap4", 2)])
def test_folded_model_gives_the_unfolded_outputs(backend, monkeypatch, name, unfolded_left):
    """Every BatchNormalization after a convolution is folded; those after Dense(relu)
    (vggbn's and gap4's heads, (N, 512) at most) are left as they are."""
    rng = np.random.default_rng(0)
    model = fer_models.build(name, seed=1)
    randomise_batchnorm(model, rng)
    x = rng.random((fold.FOLD_MIN_BATCH, 48, 48, 1), dtype=np.float32)
    expected = unfolded(model, x)
    calls = count_batchnorm_calls(monkeypatch)
    got = fused_call(model, x).numpy()
    assert len(calls) == unfolded_left, f"{name}: {len(calls)} BatchNormalization layers ran unfolded"
    assert_close(f"{name} folded", "output", got, expected, RTOL, ATOL)


def test_relu_conv_batchnorm_and_dense_batchnorm_relu(backend, monkeypatch):
    """Conv2D(relu) -> BN: the normalisation joins the epilogue (the ReLU comes first, so
    the weights cannot absorb it); Dense -> BN -> ReLU: folded into the weights."""
    rng = np.random.default_rng(1)
    model = tc.Sequential([Conv2D(4, 3, activation="relu"), BatchNormalization(),
                           Flatten(), Dense(5), BatchNormalization(), ReLU(), Dense(3)], input_shape=(6, 6, 2))
    randomise_batchnorm(model, rng)
    x = random_array(rng, (9, 6, 6, 2))
    expected = unfolded(model, x)
    calls = count_batchnorm_calls(monkeypatch)
    got = fused_call(model, x).numpy()
    assert calls == [], "both BatchNormalization layers should have been folded"
    assert_close("Conv2D(relu), BN, Flatten, Dense, BN, ReLU, Dense folded", "output", got, expected, RTOL, ATOL)
    calls.clear()
    fused_call(model, x[:fold.FOLD_MIN_BATCH - 1])
    assert len(calls) == 1, "below FOLD_MIN_BATCH only the epilogue (Conv2D(relu) -> BN) is fused"


def test_never_stale_after_the_weights_change(backend):
    rng = np.random.default_rng(2)
    model = tc.Sequential([Conv2D(8, 3, padding="same", use_bias=False), BatchNormalization(), ReLU(),
                           Conv2D(8, 3, padding="same", activation="relu"), BatchNormalization(),
                           Residual([Conv2D(8, 3, padding="same"), BatchNormalization()]), MaxPool2D(),
                           GlobalAveragePooling2D(), Dense(3)], input_shape=(8, 8, 2))
    randomise_batchnorm(model, rng)
    x = random_array(rng, (16, 8, 8, 2))
    before = model.predict(x)
    assert_close("folded predict", "output", before, unfolded(model, x), RTOL, ATOL)

    opt = tc.optim.SGD(model.parameters(), lr=0.5)          # a training step: weights and statistics move
    loss = tc.losses.softmax_cross_entropy(model(x, training=True), np.arange(16) % 3)
    opt.zero_grad()
    loss.backward()
    opt.step()
    after_step = model.predict(x)
    assert np.abs(after_step - before).max() > 1e-3
    assert_close("predict after a training step", "output", after_step, unfolded(model, x), RTOL, ATOL)

    weights = model.get_weights()                            # set_weights, and an edit in place
    weights["batch_normalization/moving_mean"] += 0.5
    model.set_weights(weights)
    model.layers[0].kernel.data[...] *= -1
    model.layers[4].gamma.data[...] *= 2
    assert_close("predict after set_weights and an in-place edit", "output", model.predict(x), unfolded(model, x),
                 RTOL, ATOL)


def test_gradients_in_inference_mode_are_not_folded(backend):
    """Saliency maps take gradients with training=False: they must reach every weight."""
    rng = np.random.default_rng(3)
    model = tc.Sequential([Conv2D(3, 3, use_bias=False), BatchNormalization(), ReLU(), Flatten(), Dense(2)],
                          input_shape=(5, 5, 1))
    x = tc.Tensor(random_array(rng, (fold.FOLD_MIN_BATCH, 5, 5, 1)), requires_grad=True)
    model(x, training=False).backward(random_array(rng, (fold.FOLD_MIN_BATCH, 2)))
    assert x.grad is not None and model.layers[0].kernel.grad is not None and model.layers[1].gamma.grad is not None


def layer_by_layer(model, x, training):
    """The model's layers called one by one: nothing folded or fused."""
    for layer in model.layers:
        x = layer(x, training=training)
    return x


@pytest.mark.parametrize("name", ["small3", "updown"])
def test_conv_then_maxpool_runs_fused_with_the_unfused_results(backend, monkeypatch, name):
    """Each Conv2D followed by MaxPooling2D runs as one Conv2DMaxPoolFn, in training and
    inference: the inference outputs are the layer-by-layer ones to the bit (bias and ReLU
    commute with max, rounding included), the gradients the same up to summation order, with the
    input's gradient asked for and without (a first layer's weights then take theirs
    straight from the pooled gradient)."""
    from tinycnn.plan import Conv2DMaxPoolFn
    rng = np.random.default_rng(4)
    model = fer_models.build(name, seed=2)
    x = rng.random((3, 48, 48, 1), dtype=np.float32)
    labels = np.array([0, 3, 6])
    calls = []
    original = Conv2DMaxPoolFn.apply
    monkeypatch.setattr(Conv2DMaxPoolFn, "apply", lambda *a, **k: calls.append(1) or original(*a, **k))
    results = {}
    for fused in (False, True):
        calls.clear()
        with tc.no_grad():
            inferred = (fused_call(model, x) if fused else layer_by_layer(model, tc.Tensor(x), False)).numpy()
        grads = []
        for xt in (tc.Tensor(x, requires_grad=True), tc.Tensor(x)):  # as a saliency map, then as training
            out = model(xt, training=False) if fused else layer_by_layer(model, xt, False)
            for p in model.parameters():
                p.grad = None
            tc.losses.softmax_cross_entropy(out, labels).backward()
            grads.append([xt.grad] + [p.grad for p in model.parameters()])
        results[fused] = (inferred, out.numpy(), grads, len(calls))
    convs = sum(isinstance(layer, Conv2D) for layer in model.layers)
    assert results[False][3] == 0 and results[True][3] == 3 * convs, f"{name}: Conv2DMaxPoolFn calls"
    np.testing.assert_array_equal(results[True][0], results[False][0], err_msg=f"{name} inference output")
    # with gradients on, the first layer's convolution may take another kernel (im2col kept for
    # the weight gradient, unfused), so the outputs may differ by float32 rounding
    assert_close(name, "output", results[True][1], results[False][1], RTOL, ATOL)
    names = ["input"] + [p.name for p in model.parameters()]
    for case, fused_grads, unfused_grads in zip(("input with a gradient", "input without"), *(results[f][2]
                                                                                         for f in (True, False))):
        for what, a, b in zip(names, fused_grads, unfused_grads):
            if what == "input" and case == "input without":
                assert a is None and b is None
                continue
            assert_close(f"{name} ({case})", f"gradient of {what}", a, b, RTOL, ATOL)


def _relu_conv_then_batchnorm(a, b):
    return type(a) is Conv2D and a.activation == "relu" and isinstance(b, BatchNormalization)


def _batchnorm_then_relu(a, b):
    return isinstance(a, BatchNormalization) and isinstance(b, ReLU)


@pytest.mark.parametrize("name, fn, pair, inside_residual", [
    ("mini", "BatchNormReLUFn", _batchnorm_then_relu, 0), ("resfer", "BatchNormReLUFn", _batchnorm_then_relu, 1),
    ("vggbn", "Conv2DBatchNormFn", _relu_conv_then_batchnorm, 0),
    ("gap4", "Conv2DBatchNormFn", _relu_conv_then_batchnorm, 0)])
def test_batchnorm_fusions_run_in_training_with_the_unfused_results(backend, monkeypatch, name, fn, pair,
                                                                    inside_residual):
    """In training each BatchNormalization followed by a ReLU runs as one BatchNormReLUFn,
    and each Conv2D(relu) followed by BatchNormalization as one Conv2DBatchNormFn:
    outputs, every gradient and the moving averages are those of the layers called one
    by one (a Residual called as a layer runs its block unfused; a Sequential fuses
    inside it too)."""
    rng = np.random.default_rng(5)
    x = rng.random((4, 48, 48, 1), dtype=np.float32)
    labels = np.array([0, 3, 6, 2])
    calls = []
    fused_fn = getattr(fused_functions, fn)
    original = fused_fn.apply
    monkeypatch.setattr(fused_fn, "apply", lambda *a, **k: calls.append(1) or original(*a, **k))
    results = {}
    for fused in (False, True):
        model = fer_models.build(name, seed=3)
        calls.clear()
        out = model(x, training=True) if fused else layer_by_layer(model, tc.Tensor(x), True)
        tc.losses.softmax_cross_entropy(out, labels).backward()
        results[fused] = (out.numpy(), {k: v.grad for k, v in model.named_weights().items() if v.grad is not None},
                          model.get_weights(), len(calls))
    pairs = sum(pair(a, b) for a, b in zip(model.layers, model.layers[1:]))
    assert pairs and results[False][3] == 0 and results[True][3] == pairs + inside_residual, \
        f"{name}: {fn} calls {results[False][3]} unfused, {results[True][3]} fused"
    assert_close(name, "training output", results[True][0], results[False][0], RTOL, ATOL)
    assert sorted(results[True][1]) == sorted(results[False][1]) and results[True][1]
    for key, grad in results[True][1].items():
        assert_close(name, f"gradient of {key}", grad, results[False][1][key], RTOL, ATOL)
    for key, value in results[True][2].items():
        assert_close(name, f"weight {key} after the step's statistics", value, results[False][2][key], RTOL, ATOL)


@pytest.mark.parametrize("name", fer_models.names())
def test_inference_copy_gives_the_models_outputs(backend, monkeypatch, name):
    """The copy folds every BatchNormalization it can, once, and leaves out Dropout: one
    face, two (a face and its mirror) and a batch give the model's own outputs."""
    rng = np.random.default_rng(3)
    model = fer_models.build(name, seed=1)
    randomise_batchnorm(model, rng)
    x = rng.random((fold.FOLD_MIN_BATCH + 1, 48, 48, 1), dtype=np.float32)
    expected = unfolded(model, x)
    copy = model.inference_copy()
    kinds = [type(layer).__name__ for layer in copy.all_layers()]
    assert "Dropout" not in kinds, f"{name}: the inference copy kept {kinds.count('Dropout')} Dropout layers"
    unfoldable = {"vggbn": 1 + 6, "gap4": 2 + 4}.get(name, 0)  # after Dense(relu), and after Conv2D(relu)
    assert kinds.count("BatchNormalization") == unfoldable, f"{name}: {kinds}"
    with tc.no_grad():
        for n in (1, 2, len(x)):
            got = copy(x[:n], training=False).numpy()
            assert_close(f"{name} inference copy, batch {n}", "output", got, expected[:n], RTOL, ATOL)
    left = {"vggbn": 1, "gap4": 2}.get(name, 0)  # BatchNorm after Dense(relu), (N, 512) at most
    alone = [step.label for step in copy.inference_plan().steps if step.label == "BatchNormalization"]
    assert len(alone) == left, f"{name}: {len(alone)} BatchNormalization steps of their own in the copy's plan"


def copy_and_its_outputs(name, seed, n):
    """(model, its inference copy, x, the copy's outputs on x): a model with randomised
    BatchNorm statistics and a batch of n random faces."""
    rng = np.random.default_rng(seed)
    model = fer_models.build(name, seed=1)
    randomise_batchnorm(model, rng)
    x = rng.random((n, 48, 48, 1), dtype=np.float32)
    copy = model.inference_copy()
    with tc.no_grad():
        return model, copy, x, copy(x).numpy()


def test_inference_copy_is_a_snapshot(backend):
    """Its weights are its own and not trainable: changing the model afterwards (training,
    set_weights) leaves the copy's outputs as they were, and the copy has no parameters."""
    model, copy, x, before = copy_and_its_outputs("mini", 4, 3)
    assert len(list(copy.parameters())) == 0
    for layer in model.all_layers():
        for w in layer.weights.values():
            w.data = w.data * np.float32(0.5) + np.float32(0.1)
    model(x, training=True)
    with tc.no_grad():
        assert np.array_equal(copy(x).numpy(), before)
        assert not np.allclose(model(x).numpy(), before, rtol=1e-3, atol=1e-3)


def test_inference_copy_needs_a_built_model():
    with pytest.raises(ValueError, match="must be built"):
        tc.Sequential([Conv2D(4, 3), BatchNormalization()]).inference_copy()


def test_inference_copy_computes_what_is_left_of_batchnorm_once(backend):
    """The BatchNormalization left after a Conv2D(relu) (vggbn: six of them) keeps the
    affine map computed when the copy was made: spoiling its statistics afterwards
    changes nothing in the copy's outputs."""
    _, copy, x, before = copy_and_its_outputs("vggbn", 6, 2)
    after_conv = [bn for prev, bn in zip(copy.layers, copy.layers[1:])
                  if isinstance(bn, BatchNormalization) and isinstance(prev, Conv2D)]
    assert len(after_conv) == 6
    for bn in after_conv:
        bn.moving_variance.data = np.full_like(bn.moving_variance.data, np.nan)
    with tc.no_grad():
        np.testing.assert_array_equal(copy(x).numpy(), before)


def test_one_image_runs_on_one_numba_thread(monkeypatch):
    """In inference a batch of one image sets Numba to one thread for the whole call (once)
    and gives the thread count back after it; a larger batch leaves it alone."""
    import numba

    from tinycnn import backend as B
    if not B.PARALLEL or numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two Numba threads")
    model = fer_models.build("mini", seed=1)
    x = np.random.default_rng(7).random((3, 48, 48, 1), dtype=np.float32)
    from tinycnn.plan import inference
    seen = []
    original = inference._run
    monkeypatch.setattr(inference, "_run", lambda *a: seen.append(numba.get_num_threads()) or original(*a))
    previous = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        with tc.no_grad():
            one = model(x[:1]).numpy()
            model(x)
        assert seen == [1, 2] and numba.get_num_threads() == 2
        with tc.no_grad():
            np.testing.assert_allclose(one, model(x).numpy()[:1], rtol=1e-5, atol=1e-6)
    finally:
        numba.set_num_threads(previous)
