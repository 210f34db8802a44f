"""Checks of tinycnn/kernels/shapes.py that its mutation run (tests/mutation/run.sh) showed
missing: ``paddings`` itself, which the kernel tests never call (the layers do): 'valid'
pads nothing, and 'same' pads each axis by its own size, kernel and stride; and
``depthwise_conv2d_output_shape``, which only the depthwise tests call."""
from tinycnn.kernels.shapes import conv_output_size, depthwise_conv2d_output_shape, paddings


def test_valid_pads_nothing():
    assert paddings("valid", (5, 6), (3, 5), (3, 2)) == ((0, 0), (0, 0))


def test_same_pads_each_axis_by_its_own_size_kernel_and_stride():
    # height 5, kernel 3, stride 3: 2 outputs, 3 + 3 - 5 = 1 row of padding, at the bottom;
    # width 6, kernel 5, stride 2: 3 outputs, 2 * 2 + 5 - 6 = 3 columns, one left, two right.
    # Any size, kernel or stride taken from the other axis gives other paddings.
    (top, bottom), (left, right) = paddings("same", (5, 6), (3, 5), (3, 2))
    assert ((top, bottom), (left, right)) == ((0, 1), (1, 2))
    assert conv_output_size(5, 3, 3, top, bottom) == 2 and conv_output_size(6, 5, 2, left, right) == 3


def test_the_depthwise_output_shape_takes_each_axis_from_its_own_size_kernel_stride_and_padding():
    """Kills ``x_depthwise_conv2d_output_shape__mutmut_1`` to ``_23`` (which no test of
    shapes.py's list ran): a size, kernel, stride or padding dropped, made None or taken
    from the other axis, and ``c / m`` for ``c * m``."""
    # height 7 padded (1, 0), kernel 3, stride 2: (7 + 1 - 3) // 2 + 1 = 3 rows;
    # width 9 padded (0, 2), kernel 2, stride 3: (9 + 2 - 2) // 3 + 1 = 4 columns;
    # 3 channels times a depth multiplier of 4: 12 output channels.
    shape = depthwise_conv2d_output_shape((2, 7, 9, 3), (3, 2, 3, 4), (2, 3), ((1, 0), (0, 2)))
    assert shape == (2, 3, 4, 12) and all(isinstance(s, int) for s in shape)
