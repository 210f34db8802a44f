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


# -- Sequential.fit and evaluate, as a Keras user expects them ----------------------------------------
def test_fit_learns_and_reports_a_history(capsys):
    x, y = quadrant_blobs(400)
    xv, yv = quadrant_blobs(100, seed=1)
    model = small_cnn()
    history = model.fit(x, y, epochs=6, batch_size=32, validation_data=(xv, yv),
                        optimizer=tc.optim.Adam(model.parameters(), lr=3e-3), verbose=2)
    h = history.history
    assert history.epoch == [1, 2, 3, 4, 5, 6] and len(history.seconds) == 6 and model.history is history
    assert list(h) == ["loss", "accuracy", "val_loss", "val_accuracy"] and all(len(v) == 6 for v in h.values())
    assert h["loss"][-1] < h["loss"][0] / 5 and h["accuracy"][-1] >= 0.95 and h["val_accuracy"][-1] >= 0.9
    assert model.evaluate(xv, yv) == pytest.approx((h["val_loss"][-1], h["val_accuracy"][-1]))
    out = capsys.readouterr()
    assert "epoch 6/6: loss" in out.out and "val_accuracy" in out.out   # the per-epoch line
    opt = model.optimizer
    model.fit(x, y, epochs=1, verbose=0)                               # a second fit continues with it
    assert model.optimizer is opt and opt.iterations == 7 * 13   # 13 steps of 32 per epoch of 400


def test_fit_is_repeatable_with_a_seed():
    x, y = quadrant_blobs(96)
    a, b = small_cnn(seed=3), small_cnn(seed=3)
    for m in (a, b):
        m.fit(x, y, epochs=2, batch_size=16, seed=5, verbose=0)
    for (k, wa), wb in zip(a.get_weights().items(), b.get_weights().values()):
        np.testing.assert_array_equal(wa, wb, err_msg=k)


def test_fit_calls_callbacks_and_augment_and_stops_when_asked():
    x, y = quadrant_blobs(64)
    model = small_cnn()
    seen, augmented, began = [], [], []

    class StopAfterTwo:
        def on_epoch_begin(self, epoch):
            began.append(epoch)

        def on_epoch_end(self, epoch, logs):
            seen.append((epoch, sorted(logs)))
            if epoch == 2:
                model.stop_training = True

    def augment(batch, rng):
        augmented.append(batch.shape)
        return batch[:, :, ::-1]                  # a mirror: same shape, other pixels
    history = model.fit(x, y, epochs=5, batch_size=16, callbacks=[StopAfterTwo()], augment=augment, verbose=0)
    assert seen == [(1, ["accuracy", "loss"]), (2, ["accuracy", "loss"])] and history.epoch == [1, 2]
    assert began == [1, 2]
    assert augmented == [(16, 12, 12, 1)] * 8


@pytest.mark.parametrize("call, message", [
    (lambda m, x, y: m.fit(x, y.astype(np.float32)), "labels must be a 1-D integer array"),
    (lambda m, x, y: m.fit(x, y[:-1]), "64 inputs but 63 labels"),
    (lambda m, x, y: m.fit(x, y, epochs=0), "epochs and batch_size must be positive"),
    (lambda m, x, y: m.fit(x[:0], y[:0]), "no training examples"),
    (lambda m, x, y: m.fit(x, y, validation_data=(x, y[:3])), r"validation_data\): 64 inputs but 3 labels"),
    (lambda m, x, y: m.evaluate((x * 255).astype(np.uint8), y), "inputs must be a float array"),
])
def test_fit_and_evaluate_refuse_bad_data(call, message):
    x, y = quadrant_blobs(64)
    with pytest.raises(ValueError, match=message):
        call(small_cnn(), x, y)


def test_fit_continued_from_an_epoch_equals_one_run():
    """initial_epoch: epoch k's order, augmentation and Dropout masks depend on (seed, k) only."""
    x, y = quadrant_blobs(96)
    straight = small_cnn(seed=4)
    straight.fit(x, y, epochs=3, batch_size=16, seed=2, verbose=0)
    cut = small_cnn(seed=4)
    cut.fit(x, y, epochs=1, batch_size=16, seed=2, verbose=0)
    cut.fit(x, y, epochs=3, batch_size=16, seed=2, verbose=0, initial_epoch=1)
    for (k, a), b in zip(straight.get_weights().items(), cut.get_weights().values()):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7, err_msg=k)


def test_fit_stops_with_the_epoch_and_step_when_training_diverges():
    x, y = quadrant_blobs(64)
    model = small_cnn()
    with pytest.raises(tc.model.TrainingDiverged, match="loss became nan at epoch 1, step 1") as info:
        model.fit(x, y, verbose=0, loss=lambda logits, labels: logits.sum() * float("nan"))
    assert (info.value.epoch, info.value.step) == (1, 1)


@pytest.mark.parametrize("swap_on_epoch", [False, True])
def test_fit_validates_the_moving_average_with_swap_ema_weights(swap_on_epoch):
    """SwapEMAWeights: val_loss and val_accuracy are the averaged weights', training goes
    on from the trained ones, and after fit the model holds the trained weights; with
    swap_on_epoch a later callback's on_epoch_end sees the averaged weights."""
    x, y = quadrant_blobs(96)
    xv, yv = quadrant_blobs(48, seed=1)
    model = small_cnn(seed=2)
    opt = tc.optim.Adam(model.parameters(), lr=3e-3, use_ema=True, ema_momentum=0.9)
    seen = []

    class Watch:
        def on_epoch_end(self, epoch, logs):
            seen.append([p.data.copy() for p in model.parameters()])

    history = model.fit(x, y, epochs=2, batch_size=16, validation_data=(xv, yv), optimizer=opt, verbose=0,
                        callbacks=[tc.callbacks.SwapEMAWeights(opt, swap_on_epoch=swap_on_epoch), Watch()])
    trained = [p.data.copy() for p in model.parameters()]
    averaged = [a.copy() for a in opt.ema]
    assert not all(np.array_equal(t, a) for t, a in zip(trained, averaged))
    expected_at_epoch_end = averaged if swap_on_epoch else trained
    for i, (got, want) in enumerate(zip(seen[-1], expected_at_epoch_end)):
        assert np.array_equal(got, want), f"parameter {i} at on_epoch_end (swap_on_epoch={swap_on_epoch})"
    opt.swap_ema_weights()
    assert model.evaluate(xv, yv) == pytest.approx((history.history["val_loss"][-1],
                                                    history.history["val_accuracy"][-1]))
    opt.swap_ema_weights()
    with pytest.raises(ValueError, match="use_ema=True"):
        tc.callbacks.SwapEMAWeights(tc.optim.Adam(model.parameters()))


def test_fit_mixes_each_batch_with_the_epochs_draws_and_trains_on_the_mixed_targets(monkeypatch):
    """``fit(mix=...)``: the mixer gets each augmented batch with one-hot targets and the
    epoch's generator, and the loss sees what it returns."""
    from fer_models.augment import Mixer
    x, y = quadrant_blobs(32)
    calls, seen = [], []

    class Spy(Mixer):
        def __call__(self, xb, tb, rng):
            calls.append((xb.copy(), tb.copy()))
            out = super().__call__(xb, tb, rng)
            calls[-1] += out
            return out

    real = tc.losses.softmax_cross_entropy
    monkeypatch.setattr(tc.losses, "softmax_cross_entropy",
                        lambda logits, labels, **kw: seen.append(np.array(labels)) or real(logits, labels, **kw))
    model = small_cnn()
    model.fit(x, y, epochs=2, batch_size=16, mix=Spy(mixup=0.4), verbose=0, seed=7)
    assert len(calls) == 4 and len(seen) == 4
    order = np.random.default_rng([7, 1]).permutation(32)
    before_x, before_t, after_x, after_t = calls[0]
    np.testing.assert_array_equal(before_x, x[order[:16]])
    np.testing.assert_array_equal(before_t, np.eye(4, dtype=np.float32)[y[order[:16]]])
    np.testing.assert_array_equal(seen[0], after_t)          # the loss trained on the mixed targets
    assert not np.array_equal(after_x, before_x) and (after_t.max(axis=1) < 1).any()
    np.testing.assert_allclose(after_t.sum(axis=1), 1, atol=1e-6)
