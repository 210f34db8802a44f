"""Optimisers and schedules against Keras 3, on the same gradients.

Each step both sides receive the same random gradients; parameters must agree after
every step (float32 on both sides: RTOL = 1e-5, ATOL = 1e-6 scaled).
"""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tinycnn as tc
from helpers import assert_close, random_array
from tinycnn import Tensor

RTOL, ATOL = 1e-5, 1e-6
SHAPES = [(3, 3, 2, 4), (4,), (5, 3)]


def _run_both(make_ours, make_keras, steps=4, lr_change=None, seed=0):
    """Apply ``steps`` rounds of the same random gradients to tinycnn and Keras params;
    compare after each. ``lr_change=(step, lr)`` sets a new rate before that step."""
    rng = np.random.default_rng(seed)
    init = [random_array(rng, s) for s in SHAPES]
    params = [Tensor(v.copy(), requires_grad=True) for v in init]
    variables = [keras.Variable(v.copy()) for v in init]
    ours, theirs = make_ours(params), make_keras()
    label = f"{type(ours).__name__}({', '.join(f'{k}={v}' for k, v in vars(ours).items() if k in ('lr', 'momentum', 'nesterov', 'weight_decay'))})"
    for step in range(1, steps + 1):
        if lr_change and lr_change[0] == step:
            ours.lr = lr_change[1]
            theirs.learning_rate = lr_change[1]
        grads = [random_array(rng, s) for s in SHAPES]
        for p, g in zip(params, grads):
            p.grad = g.copy()
        ours.step()
        theirs.apply_gradients(zip([tf.constant(g) for g in grads], variables))
        for i, (p, v) in enumerate(zip(params, variables)):
            assert_close(label, f"parameter {i} after step {step}", p.data, v.numpy(), RTOL, ATOL)
    return params, ours


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("lr", [1e-3, 0.1])
def test_adam_matches_keras(weight_decay, lr):
    kw = dict(beta_1=0.8, beta_2=0.99, epsilon=1e-7)
    _run_both(lambda p: tc.optim.Adam(p, lr=lr, weight_decay=weight_decay, **kw),
              lambda: keras.optimizers.Adam(learning_rate=lr, weight_decay=weight_decay or None, **kw),
              lr_change=(3, lr / 2))


def test_adam_defaults_are_keras_defaults():
    ours, theirs = tc.optim.Adam([Tensor(np.zeros(1), requires_grad=True)]), keras.optimizers.Adam()
    assert (ours.lr, ours.beta_1, ours.beta_2, ours.epsilon) == pytest.approx(
        (float(theirs.learning_rate.numpy()), theirs.beta_1, theirs.beta_2, theirs.epsilon))


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True), (0.5, True)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_sgd_matches_keras(momentum, nesterov, weight_decay):
    _run_both(lambda p: tc.optim.SGD(p, lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay),
              lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=momentum, nesterov=nesterov,
                                           weight_decay=weight_decay or None),
              lr_change=(3, 0.02))


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_weight_decay_is_decoupled(name):
    """Keras 3: before the update, var -= var * weight_decay * lr. With a zero gradient
    the update itself is zero (Adam: 0 / (0 + eps)), so only the decay remains."""
    lr, wd = 0.1, 0.2
    x0 = np.array([1.0, -2.0, 0.5], np.float32)
    p = Tensor(x0.copy(), requires_grad=True)
    v = keras.Variable(x0.copy())
    ours = getattr(tc.optim, name)([p], lr=lr, weight_decay=wd)
    theirs = getattr(keras.optimizers, name)(learning_rate=lr, weight_decay=wd)
    p.grad = np.zeros(3, np.float32)
    ours.step()
    theirs.apply_gradients([(tf.zeros(3), v)])
    expected = x0 - x0 * wd * lr
    assert_close(f"{name}(weight_decay={wd})", "tinycnn after one zero-gradient step", p.data, expected, 1e-6, 1e-7)
    assert_close(f"keras {name}(weight_decay={wd})", "Keras after one zero-gradient step", v.numpy(), expected,
                 1e-6, 1e-7)


def test_parameters_without_gradient_are_left_alone():
    a, b = Tensor(np.ones(2), requires_grad=True), Tensor(np.ones(2), requires_grad=True)
    opt = tc.optim.Adam([a, b], lr=0.1, weight_decay=0.1)
    a.grad = np.ones(2, np.float32)
    opt.step()
    assert not np.array_equal(a.data, np.ones(2)) and np.array_equal(b.data, np.ones(2))


@pytest.mark.parametrize("make", [lambda p: tc.optim.Adam(p, lr=0.01, weight_decay=0.01),
                                  lambda p: tc.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True)],
                         ids=["Adam", "SGD"])
def test_state_dict_round_trip(make, tmp_path):
    """Save after 3 steps (through an .npz file), load into a fresh optimiser on a copy
    of the parameters: the next steps are identical."""
    rng = np.random.default_rng(0)
    grads = [[random_array(rng, s) for s in SHAPES] for _ in range(5)]
    params = [Tensor(random_array(rng, s), requires_grad=True) for s in SHAPES]
    opt = make(params)

    def step(o, ps, gs):
        for p, g in zip(ps, gs):
            p.grad = g.copy()
        o.step()

    for gs in grads[:3]:
        step(opt, params, gs)
    state = opt.state_dict()
    np.savez(tmp_path / "opt.npz", **state)
    saved = {k: np.array(v, copy=True) for k, v in state.items()}
    copies = [Tensor(p.data.copy(), requires_grad=True) for p in params]
    for gs in grads[3:]:
        step(opt, params, gs)
    for k in saved:  # a snapshot, as get_weights() is: the dict still holds the state at step 3
        assert np.array_equal(state[k], saved[k]), (
            f"state_dict()[{k!r}] changed after further steps: it is a live view of the optimiser")

    resumed = make(copies)
    with np.load(tmp_path / "opt.npz") as f:
        resumed.load_state_dict({k: f[k] for k in f.files})
    assert resumed.iterations == 3
    for gs in grads[3:]:
        step(resumed, copies, gs)
    for i, (p, q) in enumerate(zip(params, copies)):
        assert np.array_equal(p.data, q.data), f"parameter {i} differs after resuming"


def test_load_state_dict_with_wrong_shapes_raises():
    a = [Tensor(np.ones((2, 3)), requires_grad=True)]
    opt = tc.optim.Adam(a)
    a[0].grad = np.ones((2, 3), np.float32)
    opt.step()
    other = tc.optim.Adam([Tensor(np.ones(4), requires_grad=True)])
    with pytest.raises(ValueError, match=r"m/0.*\(2, 3\).*\(4,\)"):
        other.load_state_dict(opt.state_dict())


def test_optimizer_created_before_the_model_is_built():
    model = tc.Sequential([tc.layers.Dense(2)])
    opt = tc.optim.SGD(model.parameters(), lr=0.1)
    y = model(np.ones((1, 3), np.float32))
    (y * np.array([[1.0, -1.0]], np.float32)).sum().backward()
    before = model.layers[0].kernel.data.copy()
    opt.step()
    assert_close("SGD on a model built after it", "kernel", model.layers[0].kernel.data,
                 before - 0.1 * np.array([[1.0, -1.0]] * 3), 1e-6, 1e-7)


def test_invalid_settings_raise():
    p = [Tensor(np.ones(1), requires_grad=True)]
    with pytest.raises(ValueError, match="lr"):
        tc.optim.Adam(p, lr=0)
    with pytest.raises(ValueError, match="momentum"):
        tc.optim.SGD(p, momentum=1.0)
    with pytest.raises(ValueError, match="no parameters"):
        tc.optim.SGD([], lr=0.1).step()


# -- schedules -------------------------------------------------------------------------------------
@pytest.mark.parametrize("min_lr", [0.0, 1e-4])
def test_cosine_decay_matches_keras(min_lr):
    base, total = 0.01, 20
    ours = tc.optim.CosineDecay(base, total, min_lr=min_lr)
    theirs = keras.optimizers.schedules.CosineDecay(base, total, alpha=min_lr / base)
    for step in range(0, total + 6):
        assert ours(step) == pytest.approx(float(theirs(step)), rel=1e-5, abs=1e-9), f"CosineDecay at step {step}"


def test_cosine_decay_warmup():
    base, total, warmup = 0.1, 30, 5
    s = tc.optim.CosineDecay(base, total, min_lr=0.001, warmup=warmup)
    rates = [s(t) for t in range(total + 3)]
    assert rates[:warmup] == pytest.approx([base * (t + 1) / warmup for t in range(warmup)])
    assert rates[warmup] == pytest.approx(base)
    assert all(a >= b for a, b in zip(rates[warmup:], rates[warmup + 1:])), "not non-increasing after warm-up"
    mid = warmup + (total - warmup) / 2
    assert s(mid) == pytest.approx((base + 0.001) / 2)
    assert rates[total:] == pytest.approx([0.001] * 3)
    with pytest.raises(ValueError):
        tc.optim.CosineDecay(base, 0)


def _keras_plateau(mode, factor, patience, min_lr, min_delta, lr, metrics):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="mse")
    cb = keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", mode=mode, factor=factor, patience=patience,
                                           min_lr=min_lr, min_delta=min_delta, verbose=0)
    cb.set_model(model)
    cb.on_train_begin()
    rates = []
    for epoch, value in enumerate(metrics):
        cb.on_epoch_end(epoch, logs={"val_accuracy": value})
        rates.append(float(model.optimizer.learning_rate.numpy()))
    return rates


PLATEAU = [0.50, 0.60, 0.60, 0.605, 0.59, 0.60, 0.61, 0.61, 0.61, 0.61, 0.61, 0.61, 0.61, 0.61, 0.61, 0.7, 0.7, 0.7]


@pytest.mark.parametrize("mode, metrics", [("max", PLATEAU), ("min", [1 - m for m in PLATEAU])])
def test_reduce_lr_on_plateau_matches_keras(mode, metrics):
    kw = dict(mode=mode, factor=0.5, patience=2, min_lr=0.0003, min_delta=0.01)
    ours = tc.optim.ReduceLROnPlateau(0.002, **kw)
    rates = [ours.step(m) for m in metrics]
    expected = _keras_plateau(lr=0.002, metrics=metrics, **kw)
    assert rates == pytest.approx(expected, rel=1e-6), f"ReduceLROnPlateau({mode}): {rates} vs Keras {expected}"
    assert min(rates) == pytest.approx(0.0003) and rates[0] == 0.002  # it did reduce, down to the floor


def test_reduce_lr_on_plateau_state_round_trip():
    a = tc.optim.ReduceLROnPlateau(0.01, patience=2)
    for m in (0.5, 0.6, 0.6):
        a.step(m)
    b = tc.optim.ReduceLROnPlateau(0.01, patience=2)
    b.load_state_dict(a.state_dict())
    assert [a.step(m) for m in (0.6, 0.6, 0.6)] == [b.step(m) for m in (0.6, 0.6, 0.6)]
    assert math.isclose(a.lr, 0.0025)  # halved at the 4th and the 6th step
    with pytest.raises(ValueError, match="mode"):
        tc.optim.ReduceLROnPlateau(0.1, mode="up")


# -- the moving average of the weights (use_ema), as Keras 3's optimisers keep it -------------------
@pytest.mark.parametrize("name", ["Adam", "SGD"])
@pytest.mark.parametrize("ema_momentum", [0.9, 0.0])
def test_moving_average_matches_keras(name, ema_momentum):
    """use_ema: after every step the averages are Keras' (the first step sets them to the
    parameters), and the parameters themselves are trained as without it."""
    make_ours = {"Adam": lambda p: tc.optim.Adam(p, lr=0.05, use_ema=True, ema_momentum=ema_momentum),
                 "SGD": lambda p: tc.optim.SGD(p, lr=0.05, momentum=0.9, use_ema=True, ema_momentum=ema_momentum)}
    make_theirs = {"Adam": lambda: keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=ema_momentum),
                   "SGD": lambda: keras.optimizers.SGD(0.05, momentum=0.9, use_ema=True, ema_momentum=ema_momentum)}
    rng = np.random.default_rng(4)
    init = [random_array(rng, s) for s in SHAPES]
    params = [Tensor(v.copy(), requires_grad=True) for v in init]
    variables = [keras.Variable(v.copy()) for v in init]
    ours, theirs = make_ours[name](params), make_theirs[name]()
    label = f"{name}(use_ema=True, ema_momentum={ema_momentum})"
    for step in range(1, 5):
        grads = [random_array(rng, s) for s in SHAPES]
        for p, g in zip(params, grads):
            p.grad = g.copy()
        ours.step()
        theirs.apply_gradients(zip([tf.constant(g) for g in grads], variables))
        averages = theirs._model_variables_moving_average
        for i, (p, v, a) in enumerate(zip(params, variables, averages)):
            assert_close(label, f"parameter {i} after step {step}", p.data, v.numpy(), RTOL, ATOL)
            assert_close(label, f"average {i} after step {step}", ours.ema[i], a.numpy(), RTOL, ATOL)
    if ema_momentum:
        assert not np.allclose(ours.ema[0], params[0].data), "the average is only the last weights"


def test_swapping_the_moving_average_in_and_out():
    rng = np.random.default_rng(5)
    params = [Tensor(random_array(rng, s), requires_grad=True) for s in SHAPES]
    opt = tc.optim.SGD(params, lr=0.1, use_ema=True, ema_momentum=0.5)
    with pytest.raises(ValueError, match="no moving average yet"):
        opt.swap_ema_weights()
    for _ in range(3):
        for p in params:
            p.grad = random_array(rng, p.shape)
        opt.step()
    trained = [p.data.copy() for p in params]
    averaged = [a.copy() for a in opt.ema]
    opt.swap_ema_weights()
    for i, p in enumerate(params):
        assert np.array_equal(p.data, averaged[i]) and np.array_equal(opt.ema[i], trained[i]), i
    opt.swap_ema_weights()
    for i, p in enumerate(params):
        assert np.array_equal(p.data, trained[i]) and np.array_equal(opt.ema[i], averaged[i]), i
    with pytest.raises(ValueError, match="use_ema=False"):
        tc.optim.Adam(params).swap_ema_weights()
    with pytest.raises(ValueError, match="ema_momentum"):
        tc.optim.Adam(params, use_ema=True, ema_momentum=1.0)


def test_the_moving_average_is_saved_and_resumed(tmp_path):
    """state_dict holds the averages: a resumed optimiser continues them exactly, and a
    state saved without them is refused by one that keeps them."""
    rng = np.random.default_rng(6)
    grads = [[random_array(rng, s) for s in SHAPES] for _ in range(5)]
    params = [Tensor(random_array(rng, s), requires_grad=True) for s in SHAPES]

    def step(o, ps, gs):
        for p, g in zip(ps, gs):
            p.grad = g.copy()
        o.step()

    opt = tc.optim.Adam(params, lr=0.01, use_ema=True, ema_momentum=0.8)
    for gs in grads[:3]:
        step(opt, params, gs)
    state = opt.state_dict()
    assert {f"ema/{i}" for i in range(len(SHAPES))} <= set(state)
    copies = [Tensor(p.data.copy(), requires_grad=True) for p in params]
    resumed = tc.optim.Adam(copies, lr=0.01, use_ema=True, ema_momentum=0.8)
    resumed.load_state_dict(state)
    for gs in grads[3:]:
        step(opt, params, gs)
        step(resumed, copies, gs)
    for i in range(len(SHAPES)):
        assert np.array_equal(opt.ema[i], resumed.ema[i]), f"average {i} differs after resuming"
    plain = tc.optim.Adam(params, lr=0.01)
    step(plain, params, grads[0])
    with pytest.raises(ValueError, match="no 'ema/0'.*without use_ema"):
        tc.optim.Adam(copies, use_ema=True).load_state_dict(plain.state_dict())
