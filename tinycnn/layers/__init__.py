"""Keras-style layers. Each file holds one group: its Functions (forward above backward)
and its Layers (weights, shapes, checks)."""
from .base import Layer
from .convolution import (Conv2D, Conv2DBatchNormFn, Conv2DFn, Conv2DMaxPoolFn, Conv2DTranspose, Conv2DTransposeFn, DepthwiseConv2D,
                          DepthwiseConv2DFn, SeparableConv2D)
from .core import Activation, Dense, DenseFn, Dropout, Flatten, ReLU, Residual
from .normalization import BatchNormalization, BatchNormFn, BatchNormReLUFn
from .pooling import GlobalAveragePooling2D, GlobalAveragePooling2DFn, MaxPool2D, MaxPool2DFn, MaxPooling2D

__all__ = ["Layer", "Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D", "Dense", "Flatten",
           "Dropout", "Activation", "ReLU", "Residual", "BatchNormalization", "MaxPool2D", "MaxPooling2D",
           "GlobalAveragePooling2D", "Conv2DFn", "Conv2DMaxPoolFn", "Conv2DBatchNormFn", "Conv2DTransposeFn", "DepthwiseConv2DFn", "DenseFn",
           "BatchNormFn", "BatchNormReLUFn", "MaxPool2DFn", "GlobalAveragePooling2DFn"]
