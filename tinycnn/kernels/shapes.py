"""The shape arithmetic that convolution and pooling share: output sizes, Keras' 'same'
padding, and which window of the padded input one kernel tap sees."""
from __future__ import annotations


def conv_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int) -> int:
    """Positions a window of ``kernel`` fits at, ``stride`` apart, along a padded axis."""
    return (size + pad_before + pad_after - kernel) // stride + 1


def conv2d_output_shape(x_shape, w_shape, strides, pads):
    """(N, HO, WO, O) of the convolution of x (N, H, W, C) with w (KH, KW, C, O)."""
    n, h, w, _ = x_shape
    kh, kw, _, o = w_shape
    ho = conv_output_size(h, kh, strides[0], *pads[0])
    wo = conv_output_size(w, kw, strides[1], *pads[1])
    return n, ho, wo, o


def depthwise_conv2d_output_shape(x_shape, w_shape, strides, pads):
    """(N, HO, WO, C*M) of the depthwise convolution of x (N, H, W, C) with w (KH, KW, C, M)."""
    n, h, w, c = x_shape
    kh, kw, _, m = w_shape
    ho = conv_output_size(h, kh, strides[0], *pads[0])
    wo = conv_output_size(w, kw, strides[1], *pads[1])
    return n, ho, wo, c * m


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras/TensorFlow ``same`` padding: output ``ceil(size / stride)``; an odd
    total goes to the bottom/right (asymmetric, unlike PyTorch)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def paddings(padding: str, hw, kernel, strides):
    """((top, bottom), (left, right)) for ``"valid"`` (none) or ``"same"`` on an input of
    height and width ``hw``."""
    if padding == "valid":
        return (0, 0), (0, 0)
    return same_padding(hw[0], kernel[0], strides[0]), same_padding(hw[1], kernel[1], strides[1])


def tap_slice(a, b, ho, wo, strides):
    """The index of the padded-input window seen by kernel tap (a, b): for each of the
    (HO, WO) outputs, the input at (i*SH + a, j*SW + b)."""
    sh, sw = strides
    return (slice(None), slice(a, a + sh * (ho - 1) + 1, sh), slice(b, b + sw * (wo - 1) + 1, sw))
