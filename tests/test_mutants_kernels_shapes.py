"""Checks of tinycnn/kernels/shapes.py that its mutation run (tests/mutation/run.sh) showed
missing: ``paddings`` itself, which the kernel tests never call (the layers do): 'valid'
pads nothing, and 'same' pads each axis by its own size, kernel and stride."""
from tinycnn.kernels.shapes import conv_output_size, paddings


def test_valid_pads_nothing():
    assert paddings("valid", (5, 6), (3, 5), (3, 2)) == ((0, 0), (0, 0))


def test_same_pads_each_axis_by_its_own_size_kernel_and_stride():
    # height 5, kernel 3, stride 3: 2 outputs, 3 + 3 - 5 = 1 row of padding, at the bottom;
    # width 6, kernel 5, stride 2: 3 outputs, 2 * 2 + 5 - 6 = 3 columns, one left, two right.
    # Any size, kernel or stride taken from the other axis gives other paddings.
    (top, bottom), (left, right) = paddings("same", (5, 6), (3, 5), (3, 2))
    assert ((top, bottom), (left, right)) == ((0, 1), (1, 2))
    assert conv_output_size(5, 3, 3, top, bottom) == 2 and conv_output_size(6, 5, 2, left, right) == 3
