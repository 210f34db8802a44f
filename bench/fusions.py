"""The fused kernels against the separate ones they replace, on the FER models' shapes:
the measurements behind each fusion in ``tinycnn/kernels`` and ``tinycnn/plan/``.

    python bench/fusions.py                 # batch 128 (training) and 256 (inference), ~2 min
    python bench/fusions.py --batch 64

Each row times one piece of a training step or an inference pass both ways, on random
data, best of ``--repeats`` after one untimed call, with each side's fast kernels:

* first layer + 2x2 max pool, forward: the direct convolution then ``maxpool``, against
  ``conv2d_maxpool`` (one kernel, the convolution's output never stored);
* first layer before a max pool, weight gradient: the pool's gradient then the layer's
  weight gradient (``conv2d_grads``), against ``conv2d_grad_weight_pooled``;
* Conv2DTranspose's backward: ``conv2d`` and ``conv2d_grad_weight`` of the same
  gradient, against ``conv2d_and_grad_weight`` (its windows gathered once);
* global average pooling, forward + backward: NumPy's mean and broadcast, against the
  Numba pair;
* Winograd F(4x4, 3x3)'s and F(6x6, 3x3)'s four transforms (forward's two, the
  gradients' two) on one block of images, one core, scaled to the batch: the loops that
  read B^T and A^T at run time, against the kernels that spell them out;
* a ReLU's gradient: ``np.where`` against the Numba kernel;
* BatchNormalization then ReLU, training forward + backward: the two layers' kernels,
  against ``batchnorm_relu_forward`` and ``_backward``;
* a Conv2D(relu)'s epilogue then BatchNormalization, training forward + backward: bias
  and ReLU, BatchNorm, and their gradients, against ``bias_relu_batchnorm_forward`` and
  ``_backward`` (the convolution itself is the same both ways and left out).

Close other programs first (training runs share the same cores).
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import tinycnn as tc  # noqa: E402
from conv_layers import best_ms  # noqa: E402  (bench/ is on the path when run as a script)
from tinycnn.kernels import activation, conv, norm, pool, winograd, winograd_fast  # noqa: E402

VALID, SAME, NO_PAD = ((0, 0), (0, 0)), ((1, 1), (1, 1)), ((0, 0), (0, 0))
# (model, C -> O, padding) of the first layers followed by a 2x2 max pool, on 48x48x1 faces
FIRST_LAYERS = [("small3", 32, VALID), ("updown", 64, SAME), ("deep4", 128, VALID)]
# updown's Conv2DTranspose layers (stride 2, 'same'): input (H, C) -> output (2H, O)
TRANSPOSES = [(6, 256, 128), (12, 128, 64), (24, 64, 32)]
# (model, H, C -> O, padding) of the layers `auto` gives to Winograd
WINOGRAD_LAYERS = [("vggbn", 46, 32, 64, VALID), ("vggbn", 20, 128, 128, VALID), ("resfer", 24, 32, 64, SAME),
                   ("updown", 24, 64, 128, SAME), ("deep4", 23, 128, 256, VALID)]
# (model, H, C) of the maps global average pooling reduces
GAP_MAPS = [("updown", 48, 32), ("resfer", 3, 256)]
# (model, H, C) of BatchNorm + ReLU maps in resfer's family, and of Conv2D(relu) + BatchNorm in vggbn's and gap4's
BN_RELU_MAPS = [("resfer", 48, 32), ("resfer", 12, 128), ("resdeep", 48, 32)]
CONV_BN_MAPS = [("vggbn", 46, 32), ("vggbn", 44, 64), ("gap4", 46, 256)]


def rows(n, repeats, rng):
    """(piece, shape, separate ms, fused ms) for batch n."""
    def data(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    for name, o, pads in FIRST_LAYERS:
        x, w = rng.random((n, 48, 48, 1), dtype=np.float32), data(3, 3, 1, o) * 0.3
        z, cols = conv.conv2d(x, w, (1, 1), pads, keep_cols=True)
        hw = (z.shape[1] // 2, z.shape[2] // 2)
        pooled, argmax = pool.maxpool_fast(z, (2, 2), (2, 2), NO_PAD, hw)
        g = data(*pooled.shape) * (pooled > 0)
        label = f"{name} 48x48x1 -> {o}"
        yield ("first layer + max pool, forward", label,
               best_ms(lambda: pool.maxpool_fast(conv.conv2d_fast(x, w, (1, 1), pads), (2, 2), (2, 2), NO_PAD, hw),
                       repeats),
               best_ms(lambda: conv.conv2d_maxpool_fast(x, w, (1, 1), pads, (2, 2), (2, 2), NO_PAD, hw), repeats))

        def separate():
            dz = pool.maxpool_grad_fast(g, argmax, z.shape, (2, 2), (2, 2), NO_PAD)
            conv.conv2d_grad_weight_fast(x, dz, w.shape, (1, 1), pads, cols=cols)
        yield ("first layer before a max pool, weight gradient", label, best_ms(separate, repeats),
               best_ms(lambda: conv.conv2d_grad_weight_pooled_fast(g, argmax, conv.ConvSaved(x, w, (1, 1), pads, None),
                                                                   z.shape, (2, 2), (2, 2), NO_PAD), repeats))
    for h, c, o in TRANSPOSES:
        x, w, g = data(n, h, h, c), data(3, 3, o, c) * 0.1, data(n, 2 * h, 2 * h, o)
        pads = conv.same_padding(2 * h, 3, 2)
        pads = (pads, pads)
        yield ("Conv2DTranspose backward", f"updown {h}x{h}x{c} -> {2 * h}x{2 * h}x{o}",
               best_ms(lambda: (conv.conv2d_fast(g, w, (2, 2), pads),
                                conv.conv2d_grad_weight_fast(g, x, w.shape, (2, 2), pads)), repeats),
               best_ms(lambda: conv.conv2d_and_grad_weight_fast(g, w, x, (2, 2), pads), repeats))
    spelt = {4: (winograd_fast._input_transform_4, winograd_fast._output_transform_4,
                 winograd_fast._output_transform_adjoint_4, winograd_fast._input_transform_adjoint_4),
             6: (winograd_fast._input_transform_6, winograd_fast._output_transform_6,
                 winograd_fast._output_transform_adjoint_6, winograd_fast._input_transform_adjoint_6)}
    for name, h, c, o, pads in WINOGRAD_LAYERS:
        x = data(n, h, h, c)
        ho, wo = winograd._output_hw(x.shape, pads)
        m, nn = winograd.choose_tile(ho, wo), (winograd.choose_tile(ho, wo) + 2) ** 2
        th, tw = winograd.tile_grid(ho, wo, m)
        k = winograd_fast._block_images(n, th * tw)
        BT, _, AT = winograd.matrices(m)
        V, M = data(nn, k * th * tw, c), data(nn, k * th * tw, o)
        y, dy, dx = data(k, ho, wo, o), data(k, ho, wo, o), data(k, h, h, c)
        blocks = n / k   # one block timed (as each core runs its blocks), scaled to the batch

        def loops():
            winograd_fast._input_transform(x[:k], pads[0][0], pads[1][0], th, tw, BT, V)
            winograd_fast._output_transform(M, AT, y)
            winograd_fast._output_transform_adjoint(dy, AT, th, tw, M)
            winograd_fast._input_transform_adjoint(V, BT, pads[0][0], pads[1][0], th, tw, dx)

        def spelt_out(into=spelt[m]):
            into[0](x[:k], pads[0][0], pads[1][0], th, tw, V)
            into[1](M, y)
            into[2](dy, th, tw, M)
            into[3](V, pads[0][0], pads[1][0], th, tw, dx)
        yield (f"Winograd F({m}x{m}) transforms, the four, one core: loops vs spelt out",
               f"{name} {h}x{h}x{c} -> {o}", blocks * best_ms(loops, repeats), blocks * best_ms(spelt_out, repeats))
    for name, h, c in BN_RELU_MAPS:
        x2, g2 = data(n * h * h, c), data(n * h * h, c)
        gamma, beta = np.ones(c, np.float32), data(c) * 0.1

        def separate_bn_relu():
            y2, mean, _, inv_std = norm.batchnorm_forward_fast(x2, gamma, beta, 1e-3)
            out2 = np.maximum(y2, 0)
            norm.batchnorm_backward_fast(activation.relu_grad_fast(g2, out2), x2, mean, gamma, inv_std)

        def fused_bn_relu():
            y2, mean, _, inv_std = norm.batchnorm_relu_forward_fast(x2, gamma, beta, 1e-3)
            norm.batchnorm_relu_backward_fast(g2, y2, x2, mean, gamma, inv_std)
        yield ("ReLU gradient: np.where vs kernel", f"{name} {h}x{h}x{c}",
               best_ms(lambda: np.where(x2 > 0, g2, np.float32(0)), repeats),
               best_ms(lambda: activation.relu_grad_fast(g2, x2), repeats))
        yield ("BatchNorm + ReLU, training forward + backward", f"{name} {h}x{h}x{c}",
               best_ms(separate_bn_relu, repeats), best_ms(fused_bn_relu, repeats))
    for name, h, c in CONV_BN_MAPS:
        z2, g2 = data(n * h * h, c), data(n * h * h, c)
        b, gamma, beta = data(c) * 0.1, np.ones(c, np.float32), data(c) * 0.1

        def separate_conv_bn():
            y2 = conv.bias_relu_fast(z2.copy(), b, True)
            _, mean, _, inv_std = norm.batchnorm_forward_fast(y2, gamma, beta, 1e-3)
            dy2, _, _ = norm.batchnorm_backward_fast(g2, y2, mean, gamma, inv_std)
            conv.bias_relu_grad_fast(dy2, y2, True)

        def fused_conv_bn():
            _, y2, mean, _, inv_std = norm.bias_relu_batchnorm_forward_fast(z2.copy(), b, gamma, beta, 1e-3)
            norm.bias_relu_batchnorm_backward_fast(g2, y2, mean, gamma, inv_std)
        yield ("Conv2D(relu) epilogue + BatchNorm, training forward + backward", f"{name} {h}x{h}x{c}",
               best_ms(separate_conv_bn, repeats), best_ms(fused_conv_bn, repeats))
    for name, h, c in GAP_MAPS:
        x, dy = data(n, h, h, c), data(n, c)
        yield ("global average pooling, forward + backward", f"{name} {h}x{h}x{c}",
               best_ms(lambda: (pool.global_average_pool_reference(x),
                                pool.global_average_pool_grad_reference(dy, x.shape)), repeats),
               best_ms(lambda: (pool.global_average_pool_fast(x), pool.global_average_pool_grad_fast(dy, x.shape)),
                       repeats))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[128, 256], help="batch sizes (default 128 and 256)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per figure, the best is kept (default 5)")
    args = p.parse_args(argv)
    if min(args.batch) < 1 or args.repeats < 1:
        p.error("--batch and --repeats must be at least 1")
    tc.backend.keep_freed_memory()  # as train.py and webcam.py run
    rng = np.random.default_rng(0)
    for n in args.batch:
        print(f"\n## batch {n}: ms, best of {args.repeats}\n")
        print("| piece | shape | separate | fused | speed-up |")
        print("|---|---|---:|---:|---:|")
        for piece, shape, before, after in rows(n, args.repeats, rng):
            print(f"| {piece} | {shape} | {before:.2f} | {after:.2f} | {before / after:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
