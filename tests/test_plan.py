"""The inference plan (``tinycnn.plan.inference``): ``predict`` and ``model(x)`` under
``no_grad`` run a model as a flat list of kernel calls. Each test here fails if a step
computes something else than the layers it stands for, if a fusion is lost, or if a
returned array is overwritten by a later call."""
from __future__ import annotations

import numpy as np
import pytest

import fer_models
import tinycnn as tc
from helpers import assert_close, one_by_one
from tinycnn.layers import (Activation, BatchNormalization, Conv2D, Conv2DTranspose, Dense, DepthwiseConv2D, Dropout,
                            GlobalAveragePooling2D, MaxPool2D, Residual, SeparableConv2D)
from tinycnn.plan.inference import InferencePlan

RTOL, ATOL = 1e-4, 1e-5


def nontrivial(model, seed=0):
    """Every weight drawn away from its initial value: biases before every BatchNorm, its
    statistics, gamma of both signs (a negative scale must not move through a max pool)."""
    rng = np.random.default_rng(seed)
    for layer in model.all_layers():
        for name, w in layer.weights.items():
            if name == "moving_variance":
                value = rng.uniform(0.5, 1.5, w.shape)
            elif name == "gamma":
                value = rng.uniform(0.5, 1.5, w.shape) * rng.choice([-1, 1], w.shape)
            else:
                value = rng.normal(0, 0.3 if name != "kernel" else 0.2, w.shape)
            w.data = value.astype(np.float32)
    return model


@pytest.mark.parametrize("name", fer_models.names())
def test_every_architecture_predicts_its_layers_outputs(backend, name):
    """One face (its own thread setting), two, and a batch past the folding threshold."""
    model = nontrivial(fer_models.build(name, seed=1), seed=2)
    x = np.random.default_rng(3).random((9, 48, 48, 1), dtype=np.float32)
    expected = one_by_one(model, x)
    for n in (1, 2, 9):
        assert_close(f"{name} plan, batch {n}", "output", model.predict(x[:n]), expected[:n], RTOL, ATOL)


def everything():
    """A step of every kind, and layers that have none of their own (they run through
    their __call__): DepthwiseConv2D, SeparableConv2D, Softmax."""
    return nontrivial(tc.Sequential([
        Conv2D(6, 3, padding="same"), BatchNormalization(epsilon=0.2), Activation("relu"),   # folded with its ReLU
        Conv2D(6, 3, activation="relu"), BatchNormalization(epsilon=0.05),                   # BN in the epilogue
        Conv2D(6, 3, padding="same", activation="relu"), MaxPool2D(),                        # pooled, then bias + ReLU
        Residual([Conv2D(6, 3, padding="same"), BatchNormalization(), Activation("relu")],
                 [Conv2D(6, 1)]),
        DepthwiseConv2D(3, padding="same", activation="relu"), SeparableConv2D(8, 3, padding="same"),
        Conv2DTranspose(5, 3, strides=2, padding="same", activation="relu"), Dropout(0.5),
        BatchNormalization(epsilon=0.3), MaxPool2D(),
        GlobalAveragePooling2D(), Dense(12, activation="relu"), BatchNormalization(), Activation("linear"),
        Dense(4), Activation("softmax"),
    ], input_shape=(11, 11, 2), seed=4, name="everything"), seed=5)


def test_each_step_kind_and_the_fallback_give_the_layers_outputs(backend):
    model = everything()
    x = np.random.default_rng(6).random((10, 11, 11, 2), dtype=np.float32)
    expected = one_by_one(model, x)
    for n in (1, 3, 10):
        assert_close(f"plan of every step kind, batch {n}", "output", model.predict(x[:n]), expected[:n], RTOL, ATOL)
    labels = [step.label for step in model.inference_plan().steps]
    assert labels[:4] == ["Conv2D(relu)", "Conv2D(relu) + BatchNormalization", "Conv2D(relu) + MaxPooling2D",
                          "Residual(relu)"], labels
    assert "Dropout" not in " ".join(labels) and labels[-1] == "Activation(softmax)", labels


def test_the_plan_fuses_what_the_fold_fuses():
    """small3: each Conv2D with its MaxPooling2D is one step; vggbn: each Conv2D(relu) with
    the BatchNormalization after it, and the MaxPooling2D after those where there is one;
    Dropout gone."""
    small3, vggbn = fer_models.build("small3"), fer_models.build("vggbn")
    for model in (small3, vggbn):
        model.predict(np.zeros((1, 48, 48, 1), np.float32))
    assert [s.label for s in small3.inference_plan().steps][:3] == ["Conv2D(relu) + MaxPooling2D"] * 3
    labels = [s.label for s in vggbn.inference_plan().steps]
    assert labels.count("Conv2D(relu) + BatchNormalization") == 3, labels
    assert labels.count("Conv2D(relu) + BatchNormalization + MaxPooling2D") == 3, labels
    assert not any("Dropout" in s for s in labels), labels


def test_a_returned_array_is_never_overwritten_by_a_later_call():
    """The plan's arrays come from the pool, reused between calls: an output the caller
    holds (here 24x24x64 floats a face, far above the pool's threshold) must stay as it was."""
    model = tc.Sequential([Conv2D(64, 3, padding="same", activation="relu"), MaxPool2D()], input_shape=(48, 48, 1))
    rng = np.random.default_rng(7)
    a, b = rng.random((4, 48, 48, 1), dtype=np.float32), rng.random((4, 48, 48, 1), dtype=np.float32)
    first = model.predict(a)
    kept = first.copy()
    for _ in range(3):
        second = model.predict(b)
    np.testing.assert_array_equal(first, kept)
    assert not np.shares_memory(first, second)


def test_a_copys_plan_follows_the_copys_own_weights():
    """An inference copy held by the caller is a model too: set_weights on it remakes its plan."""
    model = nontrivial(fer_models.build("mini", seed=1))
    x = np.random.default_rng(8).random((2, 48, 48, 1), dtype=np.float32)
    copy = model.inference_copy()
    before = copy.predict(x)
    weights = {k: v * np.float32(0.5) for k, v in copy.get_weights().items()}
    copy.set_weights(weights)
    after = copy.predict(x)
    assert not np.allclose(before, after)
    assert_close("copy after set_weights", "output", after, one_by_one(copy, x), RTOL, ATOL)


def test_one_plan_per_input_size():
    """A model without a fixed size (convolutions, then global pooling) predicts other sizes
    through a plan of their own, and the plan refuses an input of another shape."""
    model = nontrivial(tc.Sequential([Conv2D(4, 3, activation="relu"), MaxPool2D(), GlobalAveragePooling2D(),
                                      Dense(3)], input_shape=(12, 12, 1)))
    rng = np.random.default_rng(9)
    for size in (12, 17):
        x = rng.random((2, size, size, 1), dtype=np.float32)
        assert_close(f"{size}x{size}", "output", model.predict(x), one_by_one(model, x), RTOL, ATOL)
    plan = model.inference_plan()
    with pytest.raises(ValueError, match=r"InferencePlan .*\(batch,\) \+ \(12, 12, 1\), got \(2, 17, 17, 1\)"):
        plan(rng.random((2, 17, 17, 1), dtype=np.float32))


def test_profile_times_every_step():
    model = fer_models.build("small3")
    x = np.zeros((1, 48, 48, 1), np.float32)
    model.predict(x)
    plan = model.inference_plan()
    rows = plan.profile(x, repeats=3, warmup=1)
    assert [step for step, _ in rows] == plan.steps and all(t > 0 for _, t in rows)
    assert "Conv2D(relu) + MaxPooling2D: (48, 48, 1) -> (23, 23, 32)" in repr(plan)
    assert isinstance(plan, InferencePlan)


def through_layers(model, faces, chunk=32):
    """``predict_probabilities(model, faces, tta=True)`` computed the plain way: each member's
    layers called one at a time (``one_by_one``; gradients on, so no block folds or fuses)
    with the NumPy reference kernels, in chunks of faces."""
    from fer_models.probabilities import in_class_order, model_input, test_time_views
    members = model.members if hasattr(model, "members") else [model]
    out = []
    with tc.use_backend("numpy"):
        for m in members:
            probs = []
            for s in range(0, len(faces), chunk):
                views = test_time_views(model_input(m, faces[s:s + chunk]), True)
                probs.append(np.mean([tc.softmax(tc.Tensor(one_by_one(m, v))).numpy() for v in views], axis=0))
            out.append(in_class_order(m, np.concatenate(probs)))
    return np.mean(out, axis=0)


def bundled_faces(count=256):
    """PublicTest's first ``count`` faces; without FER-2013, as many smooth random images
    (decisions agree on any input, so the test still holds its meaning)."""
    from fer_models.data import default_location, load_fer2013
    if default_location().exists():
        return load_fer2013(default_location(), progress=False)["PublicTest"][0][:count]
    import cv2
    rng = np.random.default_rng(7)
    return np.stack([cv2.GaussianBlur(rng.random((48, 48), dtype=np.float32), (0, 0), 2)
                     for _ in range(count)])[..., None]


@pytest.mark.slow
def test_the_bundled_predictor_decides_through_the_plan_as_through_its_layers():
    """What ``predict_emotion`` decides (the bundled ensemble through the plan: BatchNorm
    folded, steps fused, Winograd with kernels frozen, buffers reused; here each face and
    its mirror, its zoomed views being more faces through the same plan) is
    what the members' own layers decide one at a time with the reference kernels, on every
    face whose top two probabilities are apart by more than float32 rounding."""
    from fer_models.predict import DEFAULT_WEIGHTS
    from fer_models.probabilities import predict_probabilities
    from helpers import assert_decisions_agree, decision_candidates
    if not DEFAULT_WEIGHTS.exists():
        pytest.skip("the bundled model is not in this checkout")
    model = fer_models.predict.load_model()
    faces = bundled_faces()
    reference = through_layers(model, faces)
    decided = (decision_candidates(reference).sum(1) == 1).mean()
    assert decided > 0.95, f"only {decided:.1%} of the faces are decided: the check says too little"
    plan = predict_probabilities(model, faces, tta=True)
    assert_decisions_agree(plan.argmax(1), reference, what="the plan's decisions")
    np.testing.assert_allclose(plan, reference, atol=2e-4)
