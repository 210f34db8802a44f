"""im2col against Winograd F(2x2, 3x3), F(4x4, 3x3) and F(6x6, 3x3) on every 3x3 convolution of the
FER models: the measurements behind ``tinycnn.kernels.conv.choose_algorithm``.

    python bench/conv_layers.py                    # batch 128 (training) and batch 1, ~3 min
    python bench/conv_layers.py --batch 128 --models vggbn

For each distinct layer shape it times, best of ``--repeats`` after one untimed call:
the forward (inference) and a training step's share (forward, then both gradients; the
first layer's input gradient is not asked for, as in training), by each algorithm's fast
kernel, and prints which one ``auto`` chooses. Close other programs first.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import fer_models  # noqa: E402
import tinycnn as tc  # noqa: E402
from tinycnn.kernels import conv, winograd, winograd_fast  # noqa: E402


def best_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def layer_shapes(models):
    """Distinct (model, H, W, C, O, padding, first) of the 3x3 stride-1 Conv2D layers."""
    seen, out = set(), []
    for name in models:
        model = fer_models.build(name)
        shape = model.input_shape
        for layer in model.all_layers():
            if isinstance(layer, tc.layers.Conv2D) and layer.kernel_size == (3, 3) and layer.strides == (1, 1):
                key = (shape[0], shape[1], shape[2], layer.filters, layer.padding)
                if key not in seen:
                    seen.add(key)
                    out.append((name, *key, shape[2] == 1))
            if layer in model.layers:
                shape = layer.compute_output_shape(shape)
            elif isinstance(layer, tc.layers.Conv2D):  # inside a Residual block: shape kept ('same')
                shape = shape[:2] + (layer.filters,)
    return out


def time_shape(n, h, w, c, o, padding, first, repeats, rng):
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    k = (rng.standard_normal((3, 3, c, o)) * 0.1).astype(np.float32)
    pads = ((1, 1), (1, 1)) if padding == "same" else ((0, 0), (0, 0))
    dy = rng.standard_normal(conv.conv2d_output_shape(x.shape, k.shape, (1, 1), pads)).astype(np.float32)
    row = {}

    def im2col_train():
        _, cols = conv.conv2d_fast(x, k, (1, 1), pads, keep_cols=True)
        if not first:
            conv.conv2d_grad_input_fast(dy, k, x.shape, (1, 1), pads)
        conv.conv2d_grad_weight_fast(x, dy, k.shape, (1, 1), pads, cols=cols)

    row["im2col"] = (best_ms(lambda: conv.conv2d_fast(x, k, (1, 1), pads), repeats), best_ms(im2col_train, repeats))
    for m in sorted(winograd.MATRICES):
        def train(m=m):  # as the layers run it
            winograd_fast.winograd_conv2d_fast(x, k, (1, 1), pads, m=m)
            winograd_fast.winograd_conv2d_grads_fast(x, dy, k, (1, 1), pads, not first, True, m=m)
        row[f"F({m}x{m})"] = (best_ms(lambda m=m: winograd_fast.winograd_conv2d_fast(x, k, (1, 1), pads, m=m), repeats),
                              best_ms(train, repeats))
    with tc.use_conv_algorithm("auto"):
        chosen = conv.choose_algorithm(x.shape, k.shape, (1, 1), pads)
    if chosen == "winograd":
        chosen = f"F({winograd.choose_tile(*dy.shape[1:3])}x{winograd.choose_tile(*dy.shape[1:3])})"
    return row, chosen


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["updown", "vggbn", "deep4", "small3", "gap4", "resfer"],
                   choices=fer_models.names())
    p.add_argument("--batch", type=int, nargs="+", default=[128, 1], help="batch sizes (default 128 and 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per figure, the best is kept (default 3)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    shapes = layer_shapes(args.models)
    for n in args.batch:
        print(f"\n## batch {n}: ms, forward / training step (forward + gradients); * = fastest\n")
        tiles = "".join(f" F({m}x{m},3x3) |" for m in sorted(winograd.MATRICES))
        print(f"| model | input | C -> O | padding | im2col |{tiles} auto chooses |")
        print("|---|---|---|---|---:|" + "---:|" * len(winograd.MATRICES) + "---|")
        for name, h, w, c, o, padding, first in shapes:
            row, chosen = time_shape(n, h, w, c, o, padding, first, args.repeats, rng)
            fastest = min(row, key=lambda a: row[a][1])
            cells = [f"{f:.2f} / {t:.2f}{' *' if a == fastest else ''}" for a, (f, t) in row.items()]
            print(f"| {name} | {h}x{w} | {c} -> {o} | {padding} | " + " | ".join(cells) + f" | {chosen} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
