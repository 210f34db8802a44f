"""Checks of tinycnn/plan/fold.py that its mutation run (tests/mutation/run.sh) showed
missing, and issue 26's fold-bias bug (``bias = layer.bias.data + t``, BatchNorm's scale
dropped from the layer's bias), which the whole suite once let through: every layer
before a BatchNormalization here has a random non-zero bias, and every BatchNormalization
a non-default epsilon, its own, large enough to matter against its variance.

Every folded path (the weights by hand, inference without gradients from
FOLD_MIN_BATCH images up, the inference copy, ``predict``) is compared with the same
layers run one by one, nothing folded."""
from __future__ import annotations

import numpy as np
import pytest

import tinycnn as tc
from helpers import assert_close
from tinycnn.layers import Activation, BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Residual
from tinycnn.plan import fold

RTOL, ATOL = 1e-5, 1e-5


def nontrivial(model, seed):
    """Biases, moving statistics, gamma and beta all random and away from 0 and 1; gamma
    of both signs (a negative scale flips a folded ReLU's side)."""
    rng = np.random.default_rng(seed)
    for layer in model.all_layers():
        for name, w in layer.weights.items():
            if name == "moving_variance":
                value = rng.uniform(0.05, 0.5, w.shape)          # of the order of the epsilons below
            elif name == "gamma":
                value = rng.uniform(0.5, 1.5, w.shape) * rng.choice([-1, 1], w.shape)
            elif name in ("bias", "beta", "moving_mean"):
                value = rng.uniform(0.3, 1.0, w.shape) * rng.choice([-1, 1], w.shape)
            else:
                continue
            w.data = value.astype(np.float32)
    return model


def one_by_one(layers, x):
    """The layers called one at a time in inference: nothing folded or fused."""
    for layer in layers:
        x = layer(x, training=False) if not isinstance(layer, Residual) else _residual(layer, x)
    return x


def _residual(block, x):
    out = one_by_one(block.block, x) + one_by_one(block.shortcut, x)
    return out.relu() if block.activation == "relu" else out


def chain(seed=0):
    """Every pattern the folding treats, each BatchNormalization with its own epsilon:
    Conv2D(bias) -> BN -> ReLU (folded with the ReLU), Conv2D(relu) -> BN (epilogue),
    Conv2D(bias) -> BN (folded, no ReLU), a residual block folding inside, Dropout,
    Dense(bias) -> BN -> ReLU, Dense(bias) -> BN as the last pair."""
    model = tc.Sequential([
        Conv2D(6, 3, padding="same"), BatchNormalization(epsilon=0.05), Activation("relu"),
        Conv2D(6, 3, padding="same", activation="relu"), BatchNormalization(epsilon=0.2),
        Conv2D(6, 3, padding="same"), BatchNormalization(epsilon=0.1), MaxPool2D(),
        Residual([Conv2D(6, 3, padding="same"), BatchNormalization(epsilon=0.3), Activation("relu"),
                  Conv2D(6, 3, padding="same"), BatchNormalization(epsilon=0.02)]),
        Dropout(0.4), Flatten(),
        Dense(10), BatchNormalization(epsilon=0.15), Activation("relu"),
        Dense(4), BatchNormalization(epsilon=0.25),
    ], input_shape=(8, 8, 2), seed=seed, name="chain")
    return nontrivial(model, seed)


@pytest.mark.parametrize("kind", ["Dense", "Conv2D"])
def test_folded_weights_by_hand(kind):
    """kernel * s and (bias - mean) * s + beta, s = gamma / sqrt(var + eps), in float64."""
    layer = Dense(3) if kind == "Dense" else Conv2D(3, 2)
    model = nontrivial(tc.Sequential([layer, BatchNormalization(epsilon=0.1)],
                                     input_shape=(4,) if kind == "Dense" else (3, 3, 2)), seed=1)
    layer, bn = model.layers
    kernel, bias = fold.folded_weights(layer, bn)

    def f64(t):
        return t.data.astype(np.float64)

    s = f64(bn.gamma) / np.sqrt(f64(bn.moving_variance) + 0.1)
    assert kernel.dtype == np.float32 and bias.dtype == np.float32
    np.testing.assert_allclose(kernel, f64(layer.kernel) * s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, (f64(layer.bias) - f64(bn.moving_mean)) * s + f64(bn.beta), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [fold.FOLD_MIN_BATCH, fold.FOLD_MIN_BATCH - 1, 1])
def test_inference_without_gradients_gives_the_layers_outputs(backend, n):
    """Folded from FOLD_MIN_BATCH images up, the epilogue alone below it, one thread for one image."""
    model = chain()
    x = np.random.default_rng(2).random((n, 8, 8, 2), dtype=np.float32)
    expected = one_by_one(model.layers, tc.Tensor(x)).numpy()
    with tc.no_grad():   # run_layers' own fusions (a model's call under no_grad is its inference copy)
        got = fold.run_layers(model.layers, tc.Tensor(x), False).numpy()
        via_copy = model(x, training=False).numpy()
    assert_close(f"chain, {n} images, no gradients", "output", got, expected, RTOL, ATOL)
    assert_close(f"chain, {n} images, the model's call", "output", via_copy, expected, RTOL, ATOL)


def test_the_batch_size_from_which_weights_are_folded(monkeypatch):
    calls = []
    original = fold.folded_weights
    monkeypatch.setattr(fold, "folded_weights", lambda *a: calls.append(1) or original(*a))
    model = chain()
    x = np.random.default_rng(3).random((fold.FOLD_MIN_BATCH, 8, 8, 2), dtype=np.float32)
    with tc.no_grad():   # run_layers' own fusions (a model's call under no_grad is its inference copy)
        fold.run_layers(model.layers, tc.Tensor(x[:-1]), False)
        assert calls == [], "below FOLD_MIN_BATCH nothing is folded"
        fold.run_layers(model.layers, tc.Tensor(x), False)
    assert len(calls) == 6, "Conv2D -> BN twice, twice in the residual block and Dense -> BN twice"


def test_inference_copy_and_predict_give_the_layers_outputs(backend):
    model = chain()
    x = np.random.default_rng(4).random((fold.FOLD_MIN_BATCH + 2, 8, 8, 2), dtype=np.float32)
    expected = one_by_one(model.layers, tc.Tensor(x)).numpy()
    copy = fold.inference_copy(model)
    kinds = [type(layer).__name__ for layer in copy.all_layers()]
    assert kinds.count("Dropout") == 0 and kinds.count("BatchNormalization") == 1, kinds   # the epilogue's
    relus = [layer.activation for layer in copy.all_layers() if isinstance(layer, (Conv2D, Dense))]
    assert relus == ["relu", "relu", "linear", "relu", "linear", "relu", "linear"], relus
    with tc.no_grad():
        for n in (1, len(x)):
            assert_close(f"inference copy, {n} images", "output", copy(x[:n]).numpy(), expected[:n], RTOL, ATOL)
    assert_close("predict", "output", model.predict(x), expected, RTOL, ATOL)


def test_inference_copy_layers_and_names():
    """A ReLU last in a chain is folded too (the copy would give the same outputs with it
    left as a layer of its own, so only its layers tell); the folded weights keep their names."""
    block = Residual([Conv2D(4, 3, padding="same"), BatchNormalization(epsilon=0.1), Activation("relu")])
    model = nontrivial(tc.Sequential([Conv2D(4, 3, padding="same"), BatchNormalization(epsilon=0.2), block,
                                      Flatten(), Dense(3), BatchNormalization(epsilon=0.3), Activation("relu")],
                                     input_shape=(5, 5, 2)), seed=6)
    copy = fold.inference_copy(model)
    summary = [(type(layer).__name__, getattr(layer, "activation", None)) for layer in copy.layers]
    assert summary == [("Conv2D", "linear"), ("Residual", "relu"), ("Flatten", None), ("Dense", "relu")], summary
    (conv,) = copy.layers[1].block
    assert (type(conv).__name__, conv.activation, conv.relu) == ("Conv2D", "relu", True)
    assert copy.layers[0].relu is False
    for layer in (copy.layers[0], conv, copy.layers[3]):
        assert (layer.kernel.name, layer.bias.name, layer.use_bias) == ("kernel", "bias", True)
        assert layer.weights == {"kernel": layer.kernel, "bias": layer.bias}
    x = np.random.default_rng(7).random((3, 5, 5, 2), dtype=np.float32)
    with tc.no_grad():
        assert_close("copy ending in a folded ReLU", "output", copy(x).numpy(),
                     one_by_one(model.layers, tc.Tensor(x)).numpy(), RTOL, ATOL)


def ends_in_relus(seed=6):
    """A residual block and a Dense head, each ending in Conv2D/Dense -> BN -> ReLU."""
    block = Residual([Conv2D(4, 3, padding="same"), BatchNormalization(epsilon=0.1), Activation("relu")])
    return nontrivial(tc.Sequential([Conv2D(4, 3, padding="same"), BatchNormalization(epsilon=0.2), block,
                                     Flatten(), Dense(3), BatchNormalization(epsilon=0.3), Activation("relu")],
                                    input_shape=(5, 5, 2)), seed=seed)


def test_run_layers_folds_the_relu_after_batchnorm_into_the_layer(monkeypatch):
    """The ReLU is handed to the folded layer (its epilogue) and skipped, not run after it:
    the outputs would be the same, so the calls tell."""
    seen = []
    for cls in (Conv2D, Dense):
        original = cls.apply_weights
        monkeypatch.setattr(cls, "apply_weights", lambda self, x, k, b, relu, original=original:
                            seen.append((type(self).__name__, relu)) or original(self, x, k, b, relu))
    relu_calls = []
    original_call = Activation.call
    monkeypatch.setattr(Activation, "call", lambda self, *a, **k: relu_calls.append(1) or original_call(self, *a, **k))
    model = ends_in_relus()
    x = np.random.default_rng(8).random((fold.FOLD_MIN_BATCH, 5, 5, 2), dtype=np.float32)
    expected = one_by_one(model.layers, tc.Tensor(x)).numpy()
    relu_calls.clear(), seen.clear()
    with tc.no_grad():
        got = fold.run_layers(model.layers, tc.Tensor(x), False).numpy()
    assert seen == [("Conv2D", False), ("Conv2D", True), ("Dense", True)], seen
    assert relu_calls == [], "the ReLUs after BatchNormalization run in the folded layers"
    assert_close("folded with the ReLUs", "output", got, expected, RTOL, ATOL)


def test_one_image_runs_on_one_numba_thread_and_unfolded(monkeypatch):
    """Which calls take the one-image path (one Numba thread for the whole call, nothing
    folded), seen without needing two Numba threads."""
    entered, folded = [], []
    original = fold.backend.one_numba_thread
    monkeypatch.setattr(fold.backend, "one_numba_thread",
                        lambda: entered.append(1) or original())
    original_fold = fold.folded_weights
    monkeypatch.setattr(fold, "folded_weights", lambda *a: folded.append(1) or original_fold(*a))
    model = chain()
    x = np.random.default_rng(9).random((fold.FOLD_MIN_BATCH, 8, 8, 2), dtype=np.float32)
    # one image: once for the whole call, the residual block's chains included
    for n, one_thread in ((1, 1), (2, 0), (fold.FOLD_MIN_BATCH, 0)):
        entered.clear(), folded.clear()
        with tc.no_grad():
            fold.run_layers(model.layers, tc.Tensor(x[:n]), False)
        assert len(entered) == one_thread, f"{n} images: one_numba_thread entered {len(entered)} times"
        assert bool(folded) == (n >= fold.FOLD_MIN_BATCH), f"{n} images: folded_weights called {len(folded)} times"


def test_relu_conv_batchnorm_epilogue_on_a_non_square_input():
    """'same' padding of a strided convolution differs along height and width here (7 -> (1, 1),
    10 -> (0, 1)): the epilogue path must take each from its own axis."""
    model = nontrivial(tc.Sequential([Conv2D(3, 3, strides=2, padding="same", activation="relu"),
                                      BatchNormalization(epsilon=0.1), Flatten(), Dense(2)],
                                     input_shape=(7, 10, 5)), seed=10)
    x = np.random.default_rng(10).random((2, 7, 10, 5), dtype=np.float32)
    expected = one_by_one(model.layers, tc.Tensor(x)).numpy()
    with tc.no_grad():
        got = fold.run_layers(model.layers, tc.Tensor(x), False).numpy()
        via_copy = fold.inference_copy(model)(x).numpy()
    assert_close("Conv2D(relu) -> BN on 7x10", "output", got, expected, RTOL, ATOL)
    assert_close("its inference copy", "output", via_copy, expected, RTOL, ATOL)


def test_inference_copy_keeps_the_models_cache_and_float32_affine():
    model = chain()
    sentinel = object()
    model._inference = sentinel                     # the model's own cached copy (Sequential.predict)
    copy = fold.inference_copy(model)
    assert model._inference is sentinel and getattr(copy, "_inference", None) is None
    left = [layer for layer in copy.all_layers() if isinstance(layer, BatchNormalization)]
    assert len(left) == 1 and all(a.dtype == np.float32 for a in left[0].frozen_affine)


def test_inference_copy_of_an_unbuilt_model_names_it():
    with pytest.raises(ValueError, match=r"^inference_copy: model 'unbuilt' must be built \(call it once, "):
        fold.inference_copy(tc.Sequential([Conv2D(4, 3), BatchNormalization()], name="unbuilt"))

    class NoLayers:
        def __repr__(self):
            return "no-layers"
    with pytest.raises(ValueError, match=r"^inference_copy: model 'no-layers' must be built"):
        fold.inference_copy(NoLayers())


@pytest.mark.parametrize("case", ["folded", "relu conv then batchnorm", "training conv then batchnorm",
                                  "training batchnorm then relu", "conv then maxpool"])
def test_every_fused_path_names_its_first_layer_for_bad_input(case):
    conv = Conv2D(2, 3, activation="relu" if "relu conv" in case or "training conv" in case else "linear", name="c1")
    second = {"folded": BatchNormalization, "conv then maxpool": MaxPool2D}.get(case, BatchNormalization)
    layers = [conv, second()] if "batchnorm then relu" not in case else [BatchNormalization(name="c1"),
                                                                          Activation("relu")]
    model = tc.Sequential(layers, input_shape=(5, 5, 1))
    x = np.ones((fold.FOLD_MIN_BATCH, 5, 5, 1), np.int64)        # integers: refused where they enter
    training = case.startswith("training")
    kind = "BatchNormalization" if "batchnorm then relu" in case else "Conv2D"
    with pytest.raises(ValueError, match=rf"^{kind} 'c1': input must be a float array"):
        if case == "conv then maxpool":
            fold.run_layers(model.layers, x, False)               # gradients on: nothing folded
        else:
            with tc.no_grad():
                fold.run_layers(model.layers, x, training)


def test_training_batchnorm_then_relu_builds_both_with_the_input_shape():
    bn, relu = BatchNormalization(), Activation("relu")
    x = np.random.default_rng(11).random((4, 5, 6, 3), dtype=np.float32)
    fold.run_layers([bn, relu], tc.Tensor(x), True)
    assert bn.input_shape == relu.input_shape == (5, 6, 3)
