"""Checks of tinycnn/plan/inference.py that its mutation run (tests/mutation/run.sh)
showed missing: the steps' labels, multiply-adds and printout, what ``profile`` runs and
on which input, the layers without a step of their own run in inference mode, and
Conv2DTranspose + GlobalAveragePooling2D by the sub-pixel kernel. Outputs are compared
with the layers called one at a time."""
from __future__ import annotations

import numpy as np
import pytest

import tinycnn as tc
from helpers import assert_close, one_by_one, random_weights
from tinycnn.layers import (Activation, BatchNormalization, Conv2D, Conv2DTranspose, Dense, DepthwiseConv2D,
                            Flatten, GlobalAveragePooling2D, MaxPool2D, Residual, SeparableConv2D)
from tinycnn.layers.base import Layer
from tinycnn.plan import inference
from tinycnn.plan.inference import InferencePlan

RTOL, ATOL = 1e-4, 1e-5


def nontrivial(model, seed):
    """Every weight random in [-0.5, 0.5), biases and BatchNorm's statistics included,
    gamma of both signs, the moving variance in [0.5, 1.5)."""
    return random_weights(model, seed, -0.5, 0.5, variance=(0.5, 1.5))


def small(seed=0):
    """Three steps: Conv2D(relu) + MaxPool2D, Flatten, Dense."""
    return nontrivial(tc.Sequential([Conv2D(3, 3, activation="relu"), MaxPool2D(), Flatten(), Dense(2)],
                                    input_shape=(6, 6, 1), seed=seed, name="small"), seed)


def test_a_linear_layers_label_names_no_activation():
    model = nontrivial(tc.Sequential([Conv2D(3, 3), Conv2D(2, 1, activation="relu"), Flatten(), Dense(2),
                                      Activation("softmax")], input_shape=(5, 5, 1)), 1)
    labels = [step.label for step in model.inference_plan().steps]
    assert labels == ["Conv2D", "Conv2D(relu)", "Flatten", "Dense", "Activation(softmax)"], labels


def test_the_printout_of_a_plan():
    plan = InferencePlan(small().layers, (6, 6, 1), name="small")
    assert repr(plan) == ("InferencePlan 'small', input (batch,) + (6, 6, 1):\n"
                          "  Conv2D(relu) + MaxPooling2D: (6, 6, 1) -> (2, 2, 3)\n"
                          "  Flatten: (2, 2, 3) -> (12,)\n"
                          "  Dense: (12,) -> (2,)")
    assert repr(plan.steps[0]) == "Step(Conv2D(relu) + MaxPooling2D: (6, 6, 1) -> (2, 2, 3))"
    assert repr(InferencePlan(small().layers, (6, 6, 1))).startswith("InferencePlan 'model', input ")
    assert plan.output_shape == (2,)
    empty = InferencePlan([], (3,))
    x = np.ones((2, 3), np.float32)
    assert empty.steps == [] and empty.output_shape == (3,)
    np.testing.assert_array_equal(empty(x), x)


def test_the_last_layers_are_fused_too():
    """A pair or a triple at the end of the model is one step, as anywhere else."""
    for tail, label in (([MaxPool2D()], "Conv2D(relu) + MaxPooling2D"),
                        ([BatchNormalization(), MaxPool2D()], "Conv2D(relu) + BatchNormalization + MaxPooling2D")):
        model = nontrivial(tc.Sequential([Conv2D(3, 3, activation="relu")] + tail, input_shape=(6, 6, 1)), 9)
        x = np.random.default_rng(9).random((2, 6, 6, 1), dtype=np.float32)
        assert [s.label for s in model.inference_plan().steps] == [label]
        assert_close(label, "output", model.predict(x), one_by_one(model, x), RTOL, ATOL)


def test_a_plan_takes_any_float_array_and_gives_float32(monkeypatch):
    """float64 in, float32 out; one Numba thread for the whole call on one image only."""
    entered = []
    original_thread = inference.backend.one_numba_thread
    monkeypatch.setattr(inference.backend, "one_numba_thread", lambda: entered.append(1) or original_thread())
    model = small()
    plan = model.inference_plan()
    x = np.random.default_rng(10).random((3, 6, 6, 1))
    for n in (1, 2, 3):
        entered.clear()
        got = plan(x[:n])
        assert got.dtype == np.float32, f"{n} images: {got.dtype}"
        assert entered == ([1] if n == 1 else []), f"{n} images: one_numba_thread entered {len(entered)} times"
        assert_close(f"float64 input, {n} images", "output", got, one_by_one(model, x[:n].astype(np.float32)),
                     RTOL, ATOL)
    flat = nontrivial(tc.Sequential([Activation("relu"), Flatten(), Dense(2)], input_shape=(6, 6, 1)), 11)
    got = flat.inference_plan()(x - 0.5)     # no convolution first to make the input float32
    assert got.dtype == np.float32, got.dtype
    assert_close("float64 into ReLU, Flatten, Dense", "output", got, one_by_one(flat, (x - 0.5).astype(np.float32)),
                 RTOL, ATOL)


def everything():
    """A step of every kind with multiply-adds, and layers without a step of their own."""
    return nontrivial(tc.Sequential([
        Conv2D(4, 3, padding="same"), Conv2D(4, 3, padding="same", activation="relu"), BatchNormalization(),
        Conv2D(4, 3, padding="same", activation="relu"), BatchNormalization(), MaxPool2D(),
        Conv2D(4, 3, padding="same"), MaxPool2D(),
        Residual([Conv2D(4, 3, padding="same", activation="relu"), Conv2D(4, 3, padding="same")], [Conv2D(4, 1)]),
        DepthwiseConv2D(3, padding="same"), SeparableConv2D(4, 3, padding="same"),
        Conv2DTranspose(3, 3, strides=2, padding="same", activation="relu"), Conv2DTranspose(3, 3, strides=2),
        GlobalAveragePooling2D(), Flatten(), Dense(5, activation="relu"), Dense(3),
    ], input_shape=(8, 8, 2), seed=2), 3)


def test_the_steps_multiply_adds_add_up_to_the_models():
    """Each step counts the multiply-adds of the layers it stands for (bench/one_face.py
    prints them beside the step's time); pools, BatchNorm and the rest count none."""
    model = everything()
    steps = model.inference_plan().steps
    assert sum(step.multiply_adds for step in steps) == model.multiply_adds() > 0
    shape = model.input_shape
    for step in steps:
        expected = sum(layer.multiply_adds(s) for layer, s in _layers_with_shapes(step, shape))
        assert step.multiply_adds == expected, f"{step.label}: {step.multiply_adds}, expected {expected}"
        shape = step.output_shape


def _layers_with_shapes(step, shape):
    for layer in step.layers:
        yield layer, shape
        shape = layer.compute_output_shape(shape)


def test_profile_runs_each_step_on_the_previous_steps_output(monkeypatch):
    """Each step ``warmup + repeats`` times (10 + 50 by default) on the float32 output of the
    step before; one Numba thread for one image only; a step's error is not swallowed."""
    model = small()
    plan = model.inference_plan()
    seen = []
    for step in plan.steps:
        original = step.run
        step.run = lambda x, _f=original, _s=step: seen.append((_s.label, x.dtype, x.shape)) or _f(x)
    entered = []
    original_thread = inference.backend.one_numba_thread
    monkeypatch.setattr(inference.backend, "one_numba_thread", lambda: entered.append(1) or original_thread())
    x = np.random.default_rng(4).random((2, 6, 6, 1))                  # float64: made float32
    rows = plan.profile(x)
    assert [step for step, _ in rows] == plan.steps and all(t >= 0 for _, t in rows)
    expected = [(s.label, np.dtype(np.float32), (2,) + s.input_shape) for s in plan.steps for _ in range(60)]
    assert seen == expected, sorted(set(seen))
    assert entered == [], "two images: the thread count is left alone"
    seen.clear()
    rows = plan.profile(x[:1], repeats=2, warmup=1)
    assert [label for label, _, _ in seen] == [s.label for s in plan.steps for _ in range(3)]
    assert entered == [1], "one image: one Numba thread for the whole profile"
    plan.steps[1].run = lambda x: (_ for _ in ()).throw(RuntimeError("step failed"))
    for n in (1, 2):
        with pytest.raises(RuntimeError, match="step failed"):
            plan.profile(x[:n], repeats=1, warmup=0)


def test_profile_times_only_the_repeats(monkeypatch):
    """The median of ``repeats`` durations, each the clock's difference around one run."""
    plan = small().inference_plan()
    now, runs = [0.0], [0]
    for step in plan.steps:   # a fake clock: the k-th run (over all steps, from 1) lasts k seconds
        original = step.run

        def run(x, _f=original):
            runs[0] += 1
            now[0] += runs[0]
            return _f(x)
        step.run = run
    monkeypatch.setattr(inference.time, "perf_counter", lambda: now[0])
    rows = plan.profile(np.zeros((2, 6, 6, 1), np.float32), repeats=3, warmup=2)
    # step j runs 5j + 1 ... 5j + 5 seconds: warm-up 5j + 1 and 5j + 2, then the median of the other three
    assert [t for _, t in rows] == [5.0 * j + 4 for j in range(len(plan.steps))]


class PlusOneInTraining(Layer):
    """A user's own layer, without a step of its own: x + 1 in training, x in inference."""

    def build(self, input_shape, rng):
        pass

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x, training):
        return x + 1.0 if training else x


def test_a_layer_without_a_step_runs_in_inference_mode():
    model = nontrivial(tc.Sequential([Conv2D(3, 3), PlusOneInTraining(), Flatten(), Dense(2)],
                                     input_shape=(5, 5, 1)), 5)
    x = np.random.default_rng(5).random((2, 5, 5, 1), dtype=np.float32)
    assert [s.label for s in model.inference_plan().steps][1] == "PlusOneInTraining"
    assert_close("a user's layer in the plan", "output", model.predict(x), one_by_one(model, x), RTOL, ATOL)


@pytest.mark.parametrize("algorithm, by_subpixel", [("winograd", 1), ("im2col", 0)])
def test_conv_transpose_then_mean_by_the_subpixel_kernel(monkeypatch, algorithm, by_subpixel):
    """Conv2DTranspose (3x3, strides 2, 'same') + GlobalAveragePooling2D as one step; where the
    sub-pixel Winograd is chosen, its kernel sums each block's outputs; either way the
    layers' outputs."""
    calls = []
    original = inference.K.subpixel_conv_transpose_mean
    monkeypatch.setattr(inference.K, "subpixel_conv_transpose_mean", lambda *a: calls.append(1) or original(*a))
    model = nontrivial(tc.Sequential([Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu"),
                                      GlobalAveragePooling2D(), Dense(3)], input_shape=(6, 5, 3)), 6)
    x = np.random.default_rng(6).random((2, 6, 5, 3), dtype=np.float32)
    with tc.use_conv_algorithm(algorithm):
        expected = one_by_one(model, x)
        calls.clear()
        got = model.predict(x)
    assert [s.label for s in model.inference_plan().steps] == ["Conv2DTranspose(relu) + GlobalAveragePooling2D",
                                                               "Dense"]
    assert len(calls) == by_subpixel, f"{algorithm}: subpixel_conv_transpose_mean called {len(calls)} times"
    assert_close(f"Conv2DTranspose + GAP by {algorithm}", "output", got, expected, RTOL, ATOL)


@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_a_residual_step_its_shape_and_activation(activation):
    """A Residual that changes the channels (2 -> 4, the shortcut a 1x1 projection), one whose
    block is empty (the identity: x + shortcut(x)), each with and without its ReLU."""
    model = nontrivial(tc.Sequential([
        Residual([Conv2D(4, 3, padding="same", activation="relu"), Conv2D(4, 3, padding="same")], [Conv2D(4, 1)],
                 activation=activation),
        Residual([], [Conv2D(4, 1)], activation=activation),
        Flatten(), Dense(3)], input_shape=(5, 5, 2)), 7)
    x = np.random.default_rng(7).random((2, 5, 5, 2), dtype=np.float32)
    steps = model.inference_plan().steps
    assert [(s.input_shape, s.output_shape) for s in steps[:2]] == [((5, 5, 2), (5, 5, 4)), ((5, 5, 4), (5, 5, 4))]
    expected = one_by_one(model, x)
    after_block = one_by_one(tc.Sequential(model.layers[:1]), x)
    if activation == "linear":
        assert (after_block < -0.05).any(), "test bug: no clearly negative output"
    assert_close(f"{activation} residuals", "output", model.predict(x), expected, RTOL, ATOL)


def test_the_layers_with_a_step_of_their_own_never_run_through_their_call(monkeypatch):
    """Conv2D, Conv2DTranspose, Dense (linear or relu), the pools, Flatten, BatchNormalization,
    a ReLU or linear Activation and Residual run as plain kernel calls on arrays: none of
    them goes through ``Layer.__call__`` (Tensors, input checks) when the plan runs."""
    model = nontrivial(tc.Sequential([
        Conv2D(4, 3, padding="same"), Activation("relu"), MaxPool2D(), BatchNormalization(epsilon=0.1),
        Residual([Conv2D(4, 3, padding="same")]), Conv2DTranspose(3, 3, strides=2, padding="same"),
        Activation("linear"), MaxPool2D(), GlobalAveragePooling2D(), Dense(6, activation="relu"), Dense(5),
        Flatten(), Dense(3, activation="linear")], input_shape=(6, 6, 2)), 8)
    x = np.random.default_rng(8).random((2, 6, 6, 2), dtype=np.float32)
    expected = one_by_one(model, x)
    plan = model.inference_plan()
    labels = [step.label for step in plan.steps]
    assert labels == ["Conv2D", "Activation(relu)", "MaxPooling2D", "BatchNormalization", "Residual(relu)",
                      "Conv2DTranspose", "Activation", "MaxPooling2D", "GlobalAveragePooling2D", "Dense(relu)",
                      "Dense", "Flatten", "Dense"], labels

    def refuse(layer, *a, **k):
        raise AssertionError(f"{layer._label()} ran through its __call__ in the plan")
    monkeypatch.setattr(Layer, "__call__", refuse)
    assert_close("layers with steps of their own", "output", plan(x), expected, RTOL, ATOL)
