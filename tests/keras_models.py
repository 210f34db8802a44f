"""The FER models built in Keras 3, for tests that compare tinycnn with Keras.

``build(name)`` makes the Keras twin of ``fer_models.build(name)``: the same layers
with the same names (tinycnn names layers as Keras does: ``conv2d``, ``conv2d_1``, ...,
so weights can be copied by name), ending in softmax as the Keras projects do where
tinycnn ends in logits. ``resfer``'s residual block is an ``Add`` named ``residual``
followed by ``Activation("relu")`` named ``residual_relu``: what
``tinycnn.io.save_keras`` writes for it. ``mini_xception()`` is the mini-Xception of
Arriaga et al. (2017), a functional model with four residual modules of separable
convolutions, as the face_classification project builds it.

Also: ``copy_weights`` between a Keras model and a tinycnn one, and
``randomise_weights`` so that every bias and every BatchNorm statistic is non-trivial.

Importing this module imports Keras (and TensorFlow).
"""
from __future__ import annotations

import re

import keras
import numpy as np
from keras import layers as K

from fer_models.classes import NUM_CLASSES

INPUT_SHAPE = (48, 48, 1)


class Names:
    """Keras' automatic names within one model: conv2d, conv2d_1, ... (Keras itself
    counts over the whole session, so a second model would get conv2d_7)."""

    def __init__(self):
        self.counts = {}

    def __call__(self, kind):
        k = self.counts.get(kind, 0)
        self.counts[kind] = k + 1
        return kind if k == 0 else f"{kind}_{k}"


def _stack(layers, name):
    """A Sequential from (Keras class, kwargs) pairs, each layer named as tinycnn names it."""
    names = Names()
    built = [keras.Input(INPUT_SHAPE, name="input_layer")]
    for cls, kwargs in layers:
        built.append(cls(**kwargs, name=names(_snake(cls.__name__))))
    return keras.Sequential(built, name=name)


def _snake(name):
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _conv(filters, padding="valid"):
    return K.Conv2D, dict(filters=filters, kernel_size=3, padding=padding, activation="relu")


def _dense(units, activation=None):
    return K.Dense, dict(units=units, activation=activation)


POOL, BN, FLAT, GAP = (K.MaxPooling2D, {}), (K.BatchNormalization, {}), (K.Flatten, {}), (K.GlobalAveragePooling2D, {})
SOFTMAX_OUT = _dense(NUM_CLASSES, "softmax")


def _drop(rate):
    return K.Dropout, dict(rate=rate)


def updown():
    up = [(K.Conv2DTranspose, dict(filters=f, kernel_size=3, strides=2, padding="same", activation="relu"))
          for f in (128, 64, 32)]
    down = []
    for f in (64, 128, 256):
        down += [_conv(f, "same"), POOL, _drop(0.3)]
    return _stack(down + up + [GAP, _dense(128, "relu"), _drop(0.5), SOFTMAX_OUT], "updown")


def vggbn():
    layers = []
    for pair in ((32, 64), (128, 128), (256, 256)):
        for f in pair:
            layers += [_conv(f), BN]
        layers += [POOL, _drop(0.25)]
    return _stack(layers + [FLAT, _dense(256, "relu"), BN, _drop(0.5), SOFTMAX_OUT], "vggbn")


def deep4():
    layers = []
    for f in (128, 256, 512, 512):
        layers += [_conv(f), POOL, _drop(0.4)]
    return _stack(layers + [FLAT, _dense(512, "relu"), _drop(0.4), _dense(256, "relu"), _drop(0.3), SOFTMAX_OUT],
                  "deep4")


def small3():
    layers = []
    for f in (32, 64, 128):
        layers += [_conv(f), POOL]
    return _stack(layers + [FLAT, _dense(128, "relu"), _drop(0.5), SOFTMAX_OUT], "small3")


def gap4():
    layers = []
    for f in (256, 128, 128, 64):
        layers += [_conv(f), BN, POOL]
    return _stack(layers + [GAP, _dense(512, "relu"), BN, _drop(0.2), _dense(64, "relu"), BN, _drop(0.2),
                            SOFTMAX_OUT], "gap4")


def _conv_bn(filters):
    return [(K.Conv2D, dict(filters=filters, kernel_size=3, padding="same", use_bias=False)), BN, (K.ReLU, {})]


def mini():
    layers = []
    for f in (16, 32, 64):
        layers += _conv_bn(f) + [POOL]
    return _stack(layers + [GAP, SOFTMAX_OUT], "mini")


def _residual_net(model_name, before, width, after):
    """Functional: tinycnn's Residual is named before its sublayers, so the Add is
    ``residual`` and the block's layers continue the numbering of the plain path."""
    names = Names()

    def apply(spec, x):
        cls, kwargs = spec
        return cls(**kwargs, name=names(_snake(cls.__name__)))(x)

    def chain(specs, x):
        for spec in specs:
            x = apply(spec, x)
        return x

    inputs = keras.Input(INPUT_SHAPE, name="input_layer")
    x = chain(before, inputs)
    add_name = names("residual")
    block = [(K.Conv2D, dict(filters=width, kernel_size=3, padding="same", use_bias=False)), BN, (K.ReLU, {}),
             (K.Conv2D, dict(filters=width, kernel_size=3, padding="same", use_bias=False)), BN]
    x = K.Add(name=add_name)([chain(block, x), x])
    x = K.Activation("relu", name="residual_relu")(x)
    x = chain(after, x)
    return keras.Model(inputs, x, name=model_name)


def resfer():
    return _residual_net("resfer", _conv_bn(32) + [POOL] + _conv_bn(64) + [POOL] + _conv_bn(128), 128,
                         [POOL] + _conv_bn(256) + [POOL, GAP, _drop(0.4), SOFTMAX_OUT])


def resdeep():
    return _residual_net("resdeep", 2 * _conv_bn(32) + [POOL] + 2 * _conv_bn(64) + [POOL] + _conv_bn(128), 128,
                         [POOL] + 2 * _conv_bn(256) + [POOL, GAP, _drop(0.4), SOFTMAX_OUT])


def reswide():
    return _residual_net("reswide", _conv_bn(48) + [POOL] + _conv_bn(96) + [POOL] + _conv_bn(192), 192,
                         [POOL] + _conv_bn(384) + [POOL, GAP, _drop(0.4), SOFTMAX_OUT])


BUILDERS = {"updown": updown, "vggbn": vggbn, "deep4": deep4, "small3": small3, "gap4": gap4,
            "resfer": resfer, "resdeep": resdeep, "reswide": reswide, "mini": mini}


def build(name) -> keras.Model:
    """The Keras twin of ``fer_models.build(name)``, ending in softmax."""
    return BUILDERS[name]()


def mini_xception(input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, l2=0.01) -> keras.Model:
    """mini-Xception (Arriaga, Valdenegro-Toro and Ploeger, 2017): a conv-BN-ReLU stem, four
    modules of [SeparableConv2D-BN-ReLU-SeparableConv2D-BN-MaxPooling2D(3, 2, same)] added to
    a [Conv2D 1x1 stride 2, BN] shortcut, a final Conv2D, global average pooling and softmax.
    Layer names are Keras' automatic ones within this model; the L2 regularisers of the
    original are kept (they only matter in training) unless ``l2`` is None."""
    names = Names()
    reg = keras.regularizers.L2(l2) if l2 is not None else None

    def conv(filters, kernel, **kwargs):
        return K.Conv2D(filters, kernel, name=names("conv2d"), **kwargs)

    def bn():
        return K.BatchNormalization(name=names("batch_normalization"))

    def relu():
        return K.Activation("relu", name=names("activation"))

    def separable(filters):
        return K.SeparableConv2D(filters, 3, padding="same", depthwise_regularizer=reg, pointwise_regularizer=reg,
                                 use_bias=False, name=names("separable_conv2d"))

    inputs = keras.Input(input_shape, name="input_layer")
    x = relu()(bn()(conv(8, 3, kernel_regularizer=reg, use_bias=False)(inputs)))
    x = relu()(bn()(conv(8, 3, kernel_regularizer=reg, use_bias=False)(x)))
    for filters in (16, 32, 64, 128):
        residual = bn()(conv(filters, 1, strides=2, padding="same", use_bias=False)(x))
        x = relu()(bn()(separable(filters)(x)))
        x = bn()(separable(filters)(x))
        x = K.MaxPooling2D(3, strides=2, padding="same", name=names("max_pooling2d"))(x)
        x = K.Add(name=names("add"))([x, residual])
    x = conv(num_classes, 3, padding="same")(x)
    x = K.GlobalAveragePooling2D(name=names("global_average_pooling2d"))(x)
    outputs = K.Activation("softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="mini_xception")


# -- weights --------------------------------------------------------------------------------------
def _keras_weight_name(path):
    """'sequential/conv2d/kernel' -> 'kernel'; DepthwiseConv2D's 'kernel' is tinycnn's 'depthwise_kernel'."""
    return path.rsplit("/", 1)[-1]


def keras_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """Every weight of a Keras model as ``{layer/weight: array}``, tinycnn's naming."""
    out = {}
    for layer in model.layers:
        for w in layer.weights:
            name = _keras_weight_name(w.path)
            if isinstance(layer, K.DepthwiseConv2D) and name == "kernel":
                name = "depthwise_kernel"
            out[f"{layer.name}/{name}"] = np.asarray(w.numpy())
    return out


def copy_weights(source, target):
    """Copy weights by ``layer/weight`` name between a Keras model and a tinycnn
    ``Sequential`` (either way round); every weight of the target must be found."""
    values = keras_weights(source) if isinstance(source, keras.Model) else source.get_weights()
    if isinstance(target, keras.Model):
        for layer in target.layers:
            new = []
            for w in layer.weights:
                name = _keras_weight_name(w.path)
                if isinstance(layer, K.DepthwiseConv2D) and name == "kernel":
                    name = "depthwise_kernel"
                new.append(values[f"{layer.name}/{name}"])
            if new:
                layer.set_weights(new)
    else:
        target.set_weights({k: values[k] for k in target.get_weights()})


def randomise_weights(model: keras.Model, seed=0):
    """Random kernels as initialised, plus random biases, gamma, beta and BatchNorm moving
    statistics (mean N(0, 0.3), variance U(0.5, 2)), so that nothing is a zero or a one."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        new = []
        for w in layer.weights:
            name, shape = _keras_weight_name(w.path), tuple(w.shape)
            value = np.asarray(w.numpy())
            if name == "moving_variance":
                value = rng.uniform(0.5, 2.0, shape)
            elif name == "gamma":
                value = 1.0 + 0.2 * rng.standard_normal(shape)
            elif name in ("beta", "moving_mean", "bias"):
                value = 0.3 * rng.standard_normal(shape)
            new.append(value.astype(np.float32))
        if new:
            layer.set_weights(new)
    return model
