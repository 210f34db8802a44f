"""Keras-style layers. Each file holds one group: its Functions (forward above backward)
and its Layers (weights, shapes, checks). How a model runs them, fused or folded, is
``tinycnn.plan``'s business."""
from .base import Layer
from .convolution import (Conv2D, Conv2DFn, Conv2DTranspose, Conv2DTransposeFn, DepthwiseConv2D, DepthwiseConv2DFn,
                          SeparableConv2D)
from .core import Activation, Dense, DenseFn, Dropout, Flatten, ReLU, Residual
from .normalization import BatchNormalization, BatchNormFn
from .pooling import GlobalAveragePooling2D, GlobalAveragePooling2DFn, MaxPool2D, MaxPool2DFn, MaxPooling2D

__all__ = ["Layer", "Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D", "Dense", "Flatten",
           "Dropout", "Activation", "ReLU", "Residual", "BatchNormalization", "MaxPool2D", "MaxPooling2D",
           "GlobalAveragePooling2D", "Conv2DFn", "Conv2DTransposeFn", "DepthwiseConv2DFn", "DenseFn", "BatchNormFn",
           "MaxPool2DFn", "GlobalAveragePooling2DFn"]
