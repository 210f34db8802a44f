"""End to end: a small CNN learns a separable problem; weights survive a file round trip."""
from __future__ import annotations

import numpy as np
import pytest

import tinycnn as tc
from tinycnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D


def quadrant_blobs(n, size=12, seed=0):
    """Noisy images (n, size, size, 1) with a bright blob in one of 4 quadrants; the label
    is the quadrant. Separable, but only by looking at *where* the blob is."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    rng.shuffle(labels)
    x = rng.uniform(0.0, 0.3, (n, size, size, 1)).astype(np.float32)
    half = size // 2
    yy, xx = np.mgrid[0:size, 0:size]
    for i, q in enumerate(labels):
        cy = rng.integers(1, half - 1) + half * (q // 2)
        cx = rng.integers(1, half - 1) + half * (q % 2)
        x[i, :, :, 0] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0).astype(np.float32)
    return x, labels


def small_cnn(seed=0, filters=6):
    return tc.Sequential([Conv2D(filters, 3, padding="same", activation="relu"), BatchNormalization(),
                          MaxPooling2D(2), Conv2D(8, 3, padding="same", activation="relu"), MaxPooling2D(2),
                          Flatten(), Dropout(0.1), Dense(4)], seed=seed)


def test_small_cnn_fits_quadrant_blobs(backend):
    x, y = quadrant_blobs(48)
    model = small_cnn()
    opt = tc.optim.Adam(model.parameters(), lr=0.01)
    losses, accuracy = [], 0.0
    for step in range(150):  # full batch; typically 100% after a few dozen steps
        loss = tc.losses.softmax_cross_entropy(model(x, training=True), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 10 == 9:
            accuracy = float((model.predict(x).argmax(axis=1) == y).mean())
            if accuracy == 1.0:
                break
    assert accuracy == 1.0, f"{backend} backend: training accuracy {accuracy:.2f} after {step + 1} steps, " \
                            f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert losses[-1] < 0.5 * losses[0]
    # and it generalises to fresh images of the same kind
    x_test, y_test = quadrant_blobs(40, seed=1)
    assert (model.predict(x_test).argmax(axis=1) == y_test).mean() >= 0.9


def test_save_and_load_weights_round_trip(backend, tmp_path):
    x, _ = quadrant_blobs(6)
    model = small_cnn(seed=1)
    model(x, training=True)  # build, and move BatchNorm's moving statistics off their start
    path = tmp_path / "weights.npz"
    model.save_weights(path)
    other = small_cnn(seed=2)
    other.build(x.shape[1:])
    assert not np.allclose(other.predict(x), model.predict(x))
    other.load_weights(path)
    np.testing.assert_array_equal(other.predict(x), model.predict(x))
    for (name, a), b in zip(model.get_weights().items(), other.get_weights().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert not list(tmp_path.glob("*.tmp*")), "a temporary file was left behind"


def test_load_weights_into_another_shape_names_the_layer_and_both_shapes(backend, tmp_path):
    x, _ = quadrant_blobs(2)
    model = small_cnn(filters=6)
    model.build(x.shape[1:])
    path = tmp_path / "weights.npz"
    model.save_weights(path)
    wider = small_cnn(filters=5)
    wider.build(x.shape[1:])
    with pytest.raises(ValueError) as err:
        wider.load_weights(path)
    message = str(err.value)
    assert "conv2d" in message and "kernel" in message, message
    assert "(3, 3, 1, 5)" in message and "(3, 3, 1, 6)" in message, message


def test_load_weights_of_another_architecture_names_the_missing_weights(backend, tmp_path):
    x, _ = quadrant_blobs(2)
    model = small_cnn()
    model.build(x.shape[1:])
    path = tmp_path / "weights.npz"
    model.save_weights(path)
    other = tc.Sequential([Conv2D(6, 3, padding="same"), Flatten(), Dense(4)])
    other.build(x.shape[1:])
    with pytest.raises(ValueError, match=r"unexpected \['batch_normalization/"):
        other.load_weights(path)
