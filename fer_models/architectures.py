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
    return (conv_bn(32) + [MaxPool2D()] + conv_bn(64) + [MaxPool2D()] + conv_bn(128) + [residual(128), MaxPool2D()]
            + conv_bn(256) + [MaxPool2D(), GlobalAveragePooling2D(), Dropout(0.4), Dense(NUM_CLASSES)])


def residual(filters):
    """Two same-padded conv-BN layers added to their input (He et al., 2016), then ReLU'd by
    the next layer: they can only refine what the plain path has."""
    return Residual([Conv2D(filters, 3, padding="same", use_bias=False), BatchNormalization(), tc.layers.ReLU(),
                     Conv2D(filters, 3, padding="same", use_bias=False), BatchNormalization()])


@register("resdeep", "ours: resfer with two conv-BN layers per stage (9 convolutions), 1.8x its compute")
def resdeep():
    """resfer trained to 72% of Training with its augmentation while scoring 66-67% on
    PublicTest: it underfits rather than overfits, so this variant spends more compute
    per image. Each stage gets a second conv-BN (more depth, the VGG recipe for
    FER-2013), the 12 px residual block stays."""
    return (conv_bn(32) + conv_bn(32) + [MaxPool2D()] + conv_bn(64) + conv_bn(64) + [MaxPool2D()]
            + conv_bn(128) + [residual(128), MaxPool2D()] + conv_bn(256) + conv_bn(256)
            + [MaxPool2D(), GlobalAveragePooling2D(), Dropout(0.4), Dense(NUM_CLASSES)])


@register("reswide", "ours: resfer with 1.5x the channels (48/96/192/384), 2.2x its compute")
def reswide():
    """resfer's layers with 1.5 times the channels: the other way to spend more compute
    per image (more width instead of ``resdeep``'s depth)."""
    return (conv_bn(48) + [MaxPool2D()] + conv_bn(96) + [MaxPool2D()] + conv_bn(192) + [residual(192), MaxPool2D()]
            + conv_bn(384) + [MaxPool2D(), GlobalAveragePooling2D(), Dropout(0.4), Dense(NUM_CLASSES)])


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
