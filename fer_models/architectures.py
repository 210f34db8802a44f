"""The FER-2013 architectures, each buildable by name: ``build(name, seed=0)``.

Five reproduce the Keras projects this project replaces (same layers, same parameter
counts); ``resfer`` is ours. Every model takes (48, 48, 1) grayscale faces in [0, 1]
and ends in ``Dense(7)`` giving *logits*: the Keras projects end in a softmax
activation (same parameters); here the loss takes logits, which is stabler, and
``fer_models.predict`` applies the softmax.
"""
from __future__ import annotations

from typing import Callable

import tinycnn as tc
from tinycnn.layers import (BatchNormalization, Conv2D, Conv2DTranspose, Dense, Dropout, Flatten,
                            GlobalAveragePooling2D, MaxPool2D, Residual)

from .classes import NUM_CLASSES

INPUT_SHAPE = (48, 48, 1)
REGISTRY: dict[str, tuple[Callable[[], list], str]] = {}


def register(name, description):
    def wrap(fn):
        REGISTRY[name] = (fn, description)
        return fn
    return wrap


def conv(filters, padding="valid"):
    return Conv2D(filters, 3, padding=padding, activation="relu")


@register("updown", "down to 6x6 with 3 conv+pool stages, back up to 48x48 with 3 Conv2DTranspose, GAP")
def updown():
    return [conv(64, "same"), MaxPool2D(), Dropout(0.3),
            conv(128, "same"), MaxPool2D(), Dropout(0.3),
            conv(256, "same"), MaxPool2D(), Dropout(0.3),
            Conv2DTranspose(128, 3, strides=2, padding="same", activation="relu"),
            Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu"),
            Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu"),
            GlobalAveragePooling2D(), Dense(128, activation="relu"), Dropout(0.5), Dense(NUM_CLASSES)]


@register("vggbn", "VGG-style pairs of valid convs, BatchNorm after each, Flatten, Dense 256")
def vggbn():
    layers = []
    for pair in ((32, 64), (128, 128), (256, 256)):
        for f in pair:
            layers += [conv(f), BatchNormalization()]
        layers += [MaxPool2D(), Dropout(0.25)]
    return layers + [Flatten(), Dense(256, activation="relu"), BatchNormalization(), Dropout(0.5),
                     Dense(NUM_CLASSES)]


@register("deep4", "4 wide valid convs (128-512), each with pool and dropout, two Dense")
def deep4():
    layers = []
    for f in (128, 256, 512, 512):
        layers += [conv(f), MaxPool2D(), Dropout(0.4)]
    return layers + [Flatten(), Dense(512, activation="relu"), Dropout(0.4),
                     Dense(256, activation="relu"), Dropout(0.3), Dense(NUM_CLASSES)]


@register("small3", "3 small valid convs (32-128) with pools, Flatten, Dense 128")
def small3():
    layers = []
    for f in (32, 64, 128):
        layers += [conv(f), MaxPool2D()]
    return layers + [Flatten(), Dense(128, activation="relu"), Dropout(0.5), Dense(NUM_CLASSES)]


@register("gap4", "4 valid convs (256-64) with BatchNorm and pools, GAP, two Dense with BatchNorm")
def gap4():
    layers = []
    for f in (256, 128, 128, 64):
        layers += [conv(f), BatchNormalization(), MaxPool2D()]
    return layers + [GlobalAveragePooling2D(),
                     Dense(512, activation="relu"), BatchNormalization(), Dropout(0.2),
                     Dense(64, activation="relu"), BatchNormalization(), Dropout(0.2),
                     Dense(NUM_CLASSES)]


def conv_bn(filters):
    return [Conv2D(filters, 3, padding="same", use_bias=False), BatchNormalization(), tc.layers.ReLU()]


@register("resfer", "ours: conv-BN stages 32/64/128/256 at 48/24/12/6 px with a residual block at 12 px, GAP; half vggbn's compute")
def resfer():
    """Spend the compute where faces are told apart: at 12x12, where a feature sees
    about a quarter of the face (eyes, mouth), two extra convolutions are added as a
    residual block (He et al., 2016), so they can only refine what the plain path has.
    Each stage doubles the channels as it halves the resolution, which keeps every
    convolution at about 10M multiply-adds."""
    block = Residual([Conv2D(128, 3, padding="same", use_bias=False), BatchNormalization(), tc.layers.ReLU(),
                      Conv2D(128, 3, padding="same", use_bias=False), BatchNormalization()])
    return (conv_bn(32) + [MaxPool2D()] + conv_bn(64) + [MaxPool2D()] + conv_bn(128) + [block, MaxPool2D()]
            + conv_bn(256) + [MaxPool2D(), GlobalAveragePooling2D(), Dropout(0.4), Dense(NUM_CLASSES)])


@register("mini", "ours: a tiny conv-BN net (16-64 channels) for quick trials, tests and notebooks")
def mini():
    layers = []
    for f in (16, 32, 64):
        layers += conv_bn(f) + [MaxPool2D()]
    return layers + [GlobalAveragePooling2D(), Dense(NUM_CLASSES)]


def names() -> list[str]:
    return list(REGISTRY)


def build(name: str, seed: int = 0) -> tc.Sequential:
    """The model ``name`` (see ``names()``), built for (48, 48, 1) inputs, seeded."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {names()}")
    fn, _ = REGISTRY[name]
    return tc.Sequential(fn(), input_shape=INPUT_SHAPE, seed=seed, name=name)


def describe(name: str) -> str:
    return REGISTRY[name][1]
