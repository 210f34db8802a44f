"""Checks of tinycnn/kernels/subpixel.py and subpixel_fast.py that their mutation runs
(tests/mutation/run.sh) showed missing: the reference kernels in their inputs' precision,
the matrices in the dtype asked for, the tile size asked for honoured by every entry and
``choose_tile``'s bound, the gates' messages in full (any rank but four refused by the gate
itself), a frozen kernel's U kept read-only and reused, and the fast entries calling the
spelt-out F(6x6) transforms (the loops for F(4x4)) with float32 results."""
import numpy as np
import pytest

from helpers import assert_close_to_magnitude, random_array
from tinycnn.kernels import conv, subpixel as S, subpixel_fast as SF, winograd_fast as WF

F32, F64 = np.float32, np.float64
SAME = ((0, 1), (0, 1))


def direct(x, w, dy):
    """(y, dx, dw) of the transposed convolution, directly, in float64."""
    out = (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], w.shape[2])
    x, w, dy = x.astype(F64), w.astype(F64), dy.astype(F64)
    return (conv.conv2d_grad_input_reference(x, w, out, (2, 2), SAME), conv.conv2d_reference(dy, w, (2, 2), SAME),
            conv.conv2d_grad_weight_reference(dy, x, w.shape, (2, 2), SAME))


def near(label, what, got, expected, magnitude):
    """Within the library's float32 tolerance, ATOL relative to the largest sum of absolute
    products behind a value (as test_subpixel.py: Winograd's rounding scales with those)."""
    assert_close_to_magnitude(label, what, got, expected, magnitude)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("m", sorted(S.MATRICES))
def test_reference_kernels_compute_in_their_inputs_precision(dtype, m):
    """float32 in, float32 out (the library's arrays); float64 in, float64 out and exact to 1e-9."""
    rng = np.random.default_rng(m)
    x, w, b = rng.standard_normal((2, 5, 7, 3)), rng.standard_normal((3, 3, 2, 3)), rng.standard_normal(2)
    dy = rng.standard_normal((2, 10, 14, 2))
    (y, dx, dw), (size_y, size_dx, size_dw) = direct(x, w, dy), direct(np.abs(x), np.abs(w), np.abs(dy))
    x, w, b, dy = x.astype(dtype), w.astype(dtype), b.astype(dtype), dy.astype(dtype)
    got = {"forward": (S.subpixel_conv_transpose_reference(x, w, b, m=m), y + b, size_y + np.abs(b)),
           "mean": (S.subpixel_conv_transpose_mean_reference(x, w, b, m=m), (y + b).mean(axis=(1, 2)),
                    size_y + np.abs(b))}
    got["input gradient"], got["weight gradient"] = zip(S.subpixel_conv_transpose_grads_reference(x, dy, w, m=m),
                                                        (dx, dw), (size_dx, size_dw))
    for name, (g, d, size) in got.items():
        assert g.dtype == dtype, f"F({m}x{m}) {name}: {g.dtype} from {dtype.__name__} inputs"
        if dtype == F32:
            near(f"F({m}x{m}) reference", name, g, d, size)
        else:
            np.testing.assert_allclose(g, d, rtol=1e-9, atol=1e-9, err_msg=f"F({m}x{m}) {name}")


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("m", sorted(S.MATRICES))
def test_every_entry_takes_the_tile_size_asked_for(monkeypatch, impl, m):
    """With the other tile size's matrices broken (zero), an entry given ``m`` still
    computes the transposed convolution: it used F(m x m) and not ``choose_tile``'s."""
    other = ({4, 6} - {m}).pop()
    monkeypatch.setitem(S.MATRICES, other, tuple(np.zeros_like(a) for a in S.MATRICES[other]))
    rng = np.random.default_rng(7)
    h = 3 if other == 4 else 9                 # choose_tile(h, h) == other
    assert S.choose_tile(h, h) == other
    x, w, dy = random_array(rng, (2, h, h, 3)), random_array(rng, (3, 3, 2, 3)), random_array(rng, (2, 2 * h, 2 * h, 2))
    (y, dx, dw), (size_y, size_dx, size_dw) = direct(x, w, dy), direct(np.abs(x), np.abs(w), np.abs(dy))
    label = f"F({m}x{m}) {impl} on {h}x{h}"
    run = getattr(conv.subpixel_conv_transpose, impl)
    mean = getattr(conv.subpixel_conv_transpose_mean, impl)
    grads = getattr(conv.subpixel_conv_transpose_grads, impl)
    near(label, "forward", run(x, w, m=m), y, size_y)
    near(label, "mean", mean(x, w, m=m), y.mean(axis=(1, 2)), size_y)
    got_dx, got_dw = grads(x, dy, w, m=m)
    near(label, "input gradient", got_dx, dx, size_dx)
    near(label, "weight gradient", got_dw, dw, size_dw)


def test_toom_cook_says_what_it_needs():
    with pytest.raises(ValueError, match=r"^F\(4, 3\) needs 6 distinct finite points, or 5 and infinity; "
                                         r"got \(0, 1, -1, 2\)$"):
        S.toom_cook(4, 3, (0, 1, -1, 2))


@pytest.mark.parametrize("who", ["subpixel_conv_transpose", "subpixel_conv_transpose_mean"])
def test_the_fast_forward_refuses_in_full(who):
    """The message names the entry and what it was given (the paddings of "same")."""
    x, w = np.zeros((1, 4, 4, 2), F32), np.zeros((5, 5, 3, 2), F32)
    with pytest.raises(ValueError) as refused:
        getattr(SF, who + "_fast")(x, w)
    assert str(refused.value) == (
        f"{who}: needs a (3, 3, O, C) kernel, strides (2, 2), paddings starting at 0 and an output of twice the "
        "input's size; got input (1, 4, 4, 2), kernel (5, 5, 3, 2), strides (2, 2), paddings ((0, 1), (0, 1)), "
        "output (1, 8, 8, 3)")


def test_the_fast_path_takes_the_spelt_out_transforms_for_f6_only():
    assert SF._transforms(6) == (SF._input_transform_6, SF._output_transform_6, SF._output_transform_adjoint_6,
                                 SF._input_transform_adjoint_6)
    assert SF._transforms(4) == (SF._input_transform, SF._output_transform, SF._output_transform_adjoint,
                                 SF._input_transform_adjoint)


@pytest.mark.parametrize("m", sorted(S.MATRICES))
def test_a_frozen_kernel_keeps_one_read_only_transform(m):
    """The first call on a frozen kernel computes U and keeps it, read-only; later calls
    (forward and input gradient) take that same U and give the same, right results."""
    rng = np.random.default_rng(11)
    x, w, dy = random_array(rng, (2, 5, 6, 3)), random_array(rng, (3, 3, 2, 3)), random_array(rng, (2, 10, 12, 2))
    (y, dx, _), (size_y, size_dx, _) = direct(x, w, dy), direct(np.abs(x), np.abs(w), np.abs(dy))
    WF.freeze_kernel(w)
    U = SF._kernel_transform(w, m)
    assert not U.flags.writeable
    assert SF._kernel_transform(w, m) is U
    label = f"frozen F({m}x{m})"
    for call in range(2):
        near(label, f"forward, call {call}", SF.subpixel_conv_transpose_fast(x, w, m=m), y, size_y)
        near(label, f"input gradient, call {call}",
             SF.subpixel_conv_transpose_grads_fast(x, dy, w, need_weight=False, m=m)[0], dx, size_dx)


@pytest.mark.parametrize("m", sorted(S.MATRICES))
def test_the_matrices_come_in_the_dtype_asked_for(m):
    for got, exact in zip(S.matrices(m), S.MATRICES[m]):
        assert got.dtype == F32 and np.array_equal(got, exact.astype(F32))
    for got, exact in zip(S.matrices(m, F64), S.MATRICES[m]):
        assert got.dtype == F64 and np.array_equal(got, exact)


def test_f4_only_where_one_tile_covers_the_map():
    """At most 4 blocks a side on both axes: one F(4x4) tile; more on either: F(6x6)."""
    assert [S.choose_tile(h, w) for h, w in [(1, 1), (4, 4), (3, 4), (4, 1)]] == [4, 4, 4, 4]
    assert [S.choose_tile(h, w) for h, w in [(5, 5), (5, 1), (1, 5), (4, 12)]] == [6, 6, 6, 6]


@pytest.mark.parametrize("x_shape, w_shape", [((4, 4, 2), (3, 3, 3, 2)), ((1, 4, 4, 2), (3, 3, 3)),
                                              ((1, 4, 4, 2), (3, 3, 3, 2, 1))])
def test_the_gate_refuses_any_rank_but_four_with_its_message(x_shape, w_shape):
    """Not an IndexError from inside ``applies``: the gate's own message, named "subpixel"
    unless the caller names itself."""
    with pytest.raises(ValueError, match=r"^subpixel: needs a \(3, 3, O, C\) kernel"):
        S.check_shapes(x_shape, w_shape, (2, 2), SAME, (1, 8, 8, 3))


@pytest.mark.parametrize("m", sorted(S.MATRICES))
def test_the_fast_entries_call_their_tile_sizes_transforms(monkeypatch, m):
    """F(6x6) runs the spelt-out transforms (and the summing one for the mean), F(4x4)
    the loops: each is wrapped where ``_transforms`` looks it up, and the results stay right."""
    names = ["_input_transform", "_output_transform", "_output_transform_adjoint", "_input_transform_adjoint"]
    names = [n + "_6" for n in names] + ["_output_sums_6"] if m == 6 else names
    called = []
    for name in names:
        real = getattr(SF, name)
        monkeypatch.setattr(SF, name, lambda *a, _real=real, _name=name: (called.append(_name), _real(*a))[1])
    rng = np.random.default_rng(13)
    x, w, dy = random_array(rng, (2, 7, 5, 3)), random_array(rng, (3, 3, 2, 3)), random_array(rng, (2, 14, 10, 2))
    (y, dx, dw), (size_y, size_dx, size_dw) = direct(x, w, dy), direct(np.abs(x), np.abs(w), np.abs(dy))
    label = f"F({m}x{m}) fast"
    got = SF.subpixel_conv_transpose_fast(x, w, m=m)
    mean = SF.subpixel_conv_transpose_mean_fast(x, w, m=m)
    got_dx, got_dw = SF.subpixel_conv_transpose_grads_fast(x, dy, w, m=m)
    assert sorted(set(called)) == sorted(names)
    for what, g, d, size in [("forward", got, y, size_y), ("mean", mean, y.mean(axis=(1, 2)), size_y),
                             ("input gradient", got_dx, dx, size_dx), ("weight gradient", got_dw, dw, size_dw)]:
        assert g.dtype == F32, f"{label} {what}: {g.dtype}"
        near(label, what, g, d, size)
