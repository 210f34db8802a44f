"""fer_models' architectures: the same parameter counts and output shapes as Keras."""
import sys
from pathlib import Path

import numpy as np
import pytest

import fer_models

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from peers import MODELS, keras_model  # noqa: E402  the Keras twins, shared with the benchmark


def keras_resfer():
    import keras
    from keras import layers as L

    def conv_bn(t, f):
        t = L.Conv2D(f, 3, padding="same", use_bias=False)(t)
        return L.ReLU()(L.BatchNormalization()(t))

    x = inp = keras.Input((48, 48, 1))
    x = L.MaxPooling2D()(conv_bn(x, 32))
    x = L.MaxPooling2D()(conv_bn(x, 64))
    x = conv_bn(x, 128)
    y = conv_bn(x, 128)
    y = L.BatchNormalization()(L.Conv2D(128, 3, padding="same", use_bias=False)(y))
    x = L.MaxPooling2D()(L.ReLU()(L.Add()([x, y])))
    x = L.MaxPooling2D()(conv_bn(x, 256))
    x = L.Dense(7)(L.Dropout(0.4)(L.GlobalAveragePooling2D()(x)))
    return keras.Model(inp, x)


@pytest.mark.parametrize("name", list(MODELS) + ["resfer"])
def test_parameter_counts_and_output_equal_keras(name):
    ours = fer_models.build(name)
    theirs = keras_resfer() if name == "resfer" else keras_model(name)
    trainable = sum(int(np.prod(w.shape)) for w in theirs.trainable_weights)
    assert ours.count_params() == theirs.count_params(), (name, ours.count_params(), theirs.count_params())
    assert sum(p.size for p in ours.parameters()) == trainable
    assert ours.predict(np.zeros((2, 48, 48, 1), np.float32)).shape == (2, 7)


def test_same_seed_same_model_other_seed_other_model():
    a, b, c = (fer_models.build("small3", seed=s).get_weights() for s in (0, 0, 1))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="resfer"):
        fer_models.build("resnet50")
