"""The five seed architectures of ``fer_models/architectures.py``, written again in Keras 3
and in PyTorch, layer for layer, for the benchmark only.

Each builder mirrors its tinycnn twin: the same filters, 3x3 kernels, paddings, 2x2
max-pools, dropout rates, BatchNorm placements (Keras' momentum 0.99 and epsilon 1e-3;
PyTorch's momentum is the complement, 0.01) and Dense sizes, ending in ``Dense(7)``
logits. ``python bench/peers.py`` prints the three parameter counts side by side.

Two differences are of layout only and change neither the parameter count nor the work:

* PyTorch is NCHW, so its ``Flatten`` reads (C, H, W) where Keras and tinycnn read
  (H, W, C): the next Dense sees the same numbers in another order.
* Keras' ``same`` padding for a stride-2 transposed 3x3 convolution gives ``2H``; in
  PyTorch that is ``ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1)``
  (``(H-1)*2 - 2 + 3 + 1 = 2H``). For stride-1 3x3 ``same``, ``padding=1`` is exact.

Parameter counts. tinycnn and Keras count BatchNorm's moving mean and variance as
(non-trainable) weights; PyTorch keeps them as buffers (``running_mean``,
``running_var``, plus an integer ``num_batches_tracked`` that is no weight at all).
``torch_param_counts`` therefore returns (trainable parameters, trainable + running
statistics), which is what the other two call (trainable, total).

TensorFlow and PyTorch are imported inside the functions, so that a benchmark process
loads only the framework it measures.
"""
from __future__ import annotations

NUM_CLASSES = 7
INPUT_SHAPE = (48, 48, 1)  # H, W, C; PyTorch takes (1, 48, 48)
MODELS = ("updown", "vggbn", "deep4", "small3", "gap4")


# -- Keras 3 ----------------------------------------------------------------------------------
def keras_model(name: str):
    """The Keras 3 model ``name``, built for (48, 48, 1) NHWC inputs, giving logits."""
    import keras
    from keras import layers as L

    def conv(f, padding="valid"):
        return L.Conv2D(f, 3, padding=padding, activation="relu")

    def bn():
        return L.BatchNormalization(momentum=0.99, epsilon=1e-3)

    if name == "updown":
        body = [conv(64, "same"), L.MaxPooling2D(), L.Dropout(0.3),
                conv(128, "same"), L.MaxPooling2D(), L.Dropout(0.3),
                conv(256, "same"), L.MaxPooling2D(), L.Dropout(0.3),
                L.Conv2DTranspose(128, 3, strides=2, padding="same", activation="relu"),
                L.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu"),
                L.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu"),
                L.GlobalAveragePooling2D(), L.Dense(128, activation="relu"), L.Dropout(0.5),
                L.Dense(NUM_CLASSES)]
    elif name == "vggbn":
        body = []
        for pair in ((32, 64), (128, 128), (256, 256)):
            for f in pair:
                body += [conv(f), bn()]
            body += [L.MaxPooling2D(), L.Dropout(0.25)]
        body += [L.Flatten(), L.Dense(256, activation="relu"), bn(), L.Dropout(0.5),
                 L.Dense(NUM_CLASSES)]
    elif name == "deep4":
        body = []
        for f in (128, 256, 512, 512):
            body += [conv(f), L.MaxPooling2D(), L.Dropout(0.4)]
        body += [L.Flatten(), L.Dense(512, activation="relu"), L.Dropout(0.4),
                 L.Dense(256, activation="relu"), L.Dropout(0.3), L.Dense(NUM_CLASSES)]
    elif name == "small3":
        body = []
        for f in (32, 64, 128):
            body += [conv(f), L.MaxPooling2D()]
        body += [L.Flatten(), L.Dense(128, activation="relu"), L.Dropout(0.5), L.Dense(NUM_CLASSES)]
    elif name == "gap4":
        body = []
        for f in (256, 128, 128, 64):
            body += [conv(f), bn(), L.MaxPooling2D()]
        body += [L.GlobalAveragePooling2D(),
                 L.Dense(512, activation="relu"), bn(), L.Dropout(0.2),
                 L.Dense(64, activation="relu"), bn(), L.Dropout(0.2),
                 L.Dense(NUM_CLASSES)]
    else:
        raise ValueError(f"keras_model: unknown model {name!r}; choose one of {MODELS}")
    return keras.Sequential([keras.Input(INPUT_SHAPE)] + body, name=name)


def keras_param_counts(model) -> tuple[int, int]:
    """(trainable, total) weights of a built Keras model; total includes BN moving stats."""
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    return trainable, int(model.count_params())


# -- PyTorch ----------------------------------------------------------------------------------
def torch_model(name: str):
    """The PyTorch model ``name`` for (N, 1, 48, 48) NCHW inputs, giving logits."""
    from torch import nn

    def conv(c_in, f, padding=0):
        return [nn.Conv2d(c_in, f, 3, padding=padding), nn.ReLU()]

    def bn2d(c):
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)  # Keras momentum 0.99

    def bn1d(c):
        return nn.BatchNorm1d(c, eps=1e-3, momentum=0.01)

    def up(c_in, f):  # Keras Conv2DTranspose(f, 3, strides=2, padding="same"): H -> 2H
        return [nn.ConvTranspose2d(c_in, f, 3, stride=2, padding=1, output_padding=1), nn.ReLU()]

    gap = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if name == "updown":  # 48 -> 24 -> 12 -> 6, then 12 -> 24 -> 48
        body = (conv(1, 64, 1) + [nn.MaxPool2d(2), nn.Dropout(0.3)]
                + conv(64, 128, 1) + [nn.MaxPool2d(2), nn.Dropout(0.3)]
                + conv(128, 256, 1) + [nn.MaxPool2d(2), nn.Dropout(0.3)]
                + up(256, 128) + up(128, 64) + up(64, 32)
                + gap + [nn.Linear(32, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, NUM_CLASSES)])
    elif name == "vggbn":  # 48 -46-44-> pool 22 -20-18-> pool 9 -7-5-> pool 2
        body, c = [], 1
        for pair in ((32, 64), (128, 128), (256, 256)):
            for f in pair:
                body += conv(c, f) + [bn2d(f)]
                c = f
            body += [nn.MaxPool2d(2), nn.Dropout(0.25)]
        body += [nn.Flatten(), nn.Linear(256 * 2 * 2, 256), nn.ReLU(), bn1d(256), nn.Dropout(0.5),
                 nn.Linear(256, NUM_CLASSES)]
    elif name == "deep4":  # 48 -46-> 23 -21-> 10 -8-> 4 -2-> 1
        body, c = [], 1
        for f in (128, 256, 512, 512):
            body += conv(c, f) + [nn.MaxPool2d(2), nn.Dropout(0.4)]
            c = f
        body += [nn.Flatten(), nn.Linear(512, 512), nn.ReLU(), nn.Dropout(0.4),
                 nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, NUM_CLASSES)]
    elif name == "small3":  # 48 -46-> 23 -21-> 10 -8-> 4
        body, c = [], 1
        for f in (32, 64, 128):
            body += conv(c, f) + [nn.MaxPool2d(2)]
            c = f
        body += [nn.Flatten(), nn.Linear(128 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.5),
                 nn.Linear(128, NUM_CLASSES)]
    elif name == "gap4":  # 48 -46-> 23 -21-> 10 -8-> 4 -2-> 1
        body, c = [], 1
        for f in (256, 128, 128, 64):
            body += conv(c, f) + [bn2d(f), nn.MaxPool2d(2)]
            c = f
        body += gap + [nn.Linear(64, 512), nn.ReLU(), bn1d(512), nn.Dropout(0.2),
                       nn.Linear(512, 64), nn.ReLU(), bn1d(64), nn.Dropout(0.2),
                       nn.Linear(64, NUM_CLASSES)]
    else:
        raise ValueError(f"torch_model: unknown model {name!r}; choose one of {MODELS}")
    return nn.Sequential(*body)


def torch_param_counts(model) -> tuple[int, int]:
    """(trainable, trainable + BatchNorm running mean/var): comparable to Keras' (trainable, total).

    ``num_batches_tracked`` (an int64 step counter) is left out: Keras has no such weight.
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = sum(b.numel() for n, b in model.named_buffers()
                if n.endswith("running_mean") or n.endswith("running_var"))
    return int(trainable), int(trainable + stats)


def tinycnn_param_counts(model) -> tuple[int, int]:
    """(trainable, total) of a built tinycnn Sequential; total is ``count_params()``."""
    return int(sum(p.size for p in model.parameters())), int(model.count_params())


if __name__ == "__main__":
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import fer_models
    print(f"{'model':8} {'tinycnn (train/total)':>24} {'keras':>24} {'torch':>24}")
    for m in MODELS:
        counts = [tinycnn_param_counts(fer_models.build(m)), keras_param_counts(keras_model(m)),
                  torch_param_counts(torch_model(m))]
        ok = "ok" if len(set(counts)) == 1 else "MISMATCH"
        print(f"{m:8} " + " ".join(f"{f'{a:,} / {b:,}':>24}" for a, b in counts) + f"  {ok}")
