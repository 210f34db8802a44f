"""Checks of tinycnn/optim.py that its mutation run (tests/mutation/run.sh) showed missing:
the defaults (Keras'), the names of the slots in a checkpoint, parameters without a
gradient anywhere in the list, the edges of the schedules, and messages naming the
optimiser. No TensorFlow here: the figures are worked out by hand."""
import math

import numpy as np
import pytest

import tinycnn as tc
from tinycnn import Tensor


def params(*values):
    return [Tensor(np.array(v, np.float32), requires_grad=True) for v in values]


def test_defaults():
    p = params([1.0])
    sgd = tc.optim.SGD(p)
    assert (sgd.lr, sgd.momentum, sgd.nesterov, sgd.weight_decay) == (pytest.approx(0.01), 0.0, False, 0.0)
    assert tc.optim.Adam(p).weight_decay == 0.0
    assert tc.optim.Optimizer(p, 0.1).weight_decay == 0.0
    assert tc.optim.CosineDecay(0.1, 10)(10) == 0.0                       # min_lr 0
    plateau = tc.optim.ReduceLROnPlateau(0.1)
    assert plateau.state_dict() == {"lr": 0.1, "best": None, "wait": 0}  # before any epoch
    # patience 3 and min_delta 1e-4: gains of 2e-4 count, three epochs without a gain halve the rate
    assert [plateau.step(m) for m in (0.5, 0.5002, 0.5004, 0.5006)] == [0.1] * 4
    assert [plateau.step(m) for m in (0.5006, 0.5007, 0.5)] == pytest.approx([0.1, 0.1, 0.05])


def test_default_sgd_step_and_zero_grad():
    (p,) = params([1.0, -2.0])
    sgd = tc.optim.SGD([p])
    p.grad = np.array([10.0, 4.0], np.float32)
    sgd.step()
    np.testing.assert_allclose(p.data, [1.0 - 0.1, -2.0 - 0.04], rtol=1e-6)
    # without momentum SGD keeps no velocity: the checkpoint's slot stays zero
    np.testing.assert_array_equal(sgd.state_dict()["velocity/0"], [0.0, 0.0])
    sgd.zero_grad()
    assert p.grad is None


def test_a_parameter_without_gradient_before_others_is_skipped_not_the_end():
    a, b, c = params([1.0], [1.0], [1.0])
    opt = tc.optim.SGD([a, b, c], lr=0.5)
    b.grad = None
    a.grad = c.grad = np.array([1.0], np.float32)
    opt.step()
    assert (a.data[0], b.data[0], c.data[0]) == (0.5, 1.0, 0.5)


def test_checkpoint_slot_names():
    p = params([1.0, 2.0], [3.0])
    adam, sgd = tc.optim.Adam(p), tc.optim.SGD(p, momentum=0.9)
    for x in p:
        x.grad = np.ones_like(x.data)
    adam.step()
    sgd.step()
    assert sorted(adam.state_dict()) == ["iterations", "lr", "m/0", "m/1", "v/0", "v/1"]
    assert sorted(sgd.state_dict()) == ["iterations", "lr", "velocity/0", "velocity/1"]


def test_messages_name_the_optimiser():
    with pytest.raises(ValueError, match=r"^SGD: lr must be positive, got -1$"):
        tc.optim.SGD(params([1.0]), lr=-1)
    with pytest.raises(ValueError, match=r"^Adam\.step\(\): no parameters to optimise"):
        tc.optim.Adam([]).step()
    adam = tc.optim.Adam(params([1.0, 2.0]))
    state = adam.state_dict()
    state["m/0"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"^Adam: state 'm/0' has shape \(3,\), parameter 0 has \(2,\)$"):
        adam.load_state_dict(state)


def test_cosine_decay_edges():
    one = tc.optim.CosineDecay(0.1, total_steps=1)               # the shortest schedule there is
    assert (one(0), one(1)) == (0.1, pytest.approx(0.0, abs=1e-12))
    with pytest.raises(ValueError, match=r"^CosineDecay: total_steps must be positive, got 0$"):
        tc.optim.CosineDecay(0.1, 0)
    # one step of decay after the warm-up: the rate reaches min_lr at step `total`
    s = tc.optim.CosineDecay(0.1, total_steps=3, min_lr=0.01, warmup=2)
    assert [s(t) for t in range(4)] == pytest.approx([0.05, 0.1, 0.1, 0.01])
    assert math.isclose(s(2.5), 0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_the_moving_average_is_off_unless_asked_and_its_messages_name_the_optimiser():
    """The moving average's mutants: ``Optimizer``'s own default (a user's optimiser calling
    ``super().__init__(params, lr)`` keeps none: ``__init____mutmut_2``) and its messages, whole
    (``__init____mutmut_15``, ``swap_ema_weights__mutmut_3``, ``_7``, ``load_state_dict__mutmut_14``,
    ``_16``, ``_17``, ``_22``: the class named, the hint only for a missing average)."""
    p = params([1.0, 2.0])

    class Plain(tc.optim.Optimizer):
        def _update(self, i, value, grad):
            value -= np.float32(self.lr) * grad

    plain = Plain(p, 0.5)
    assert plain.use_ema is False and plain.ema_momentum == pytest.approx(0.99)
    p[0].grad = np.ones(2, np.float32)
    plain.step()
    assert plain.ema == [] and sorted(plain.state_dict()) == ["iterations", "lr"]
    with pytest.raises(ValueError, match=r"^Adam: ema_momentum must be in \[0, 1\), got -0\.1$"):
        tc.optim.Adam(p, use_ema=True, ema_momentum=-0.1)
    with pytest.raises(ValueError, match=r"^Plain\.swap_ema_weights\(\): this optimiser keeps no moving average "
                                         r"\(use_ema=False\)$"):
        plain.swap_ema_weights()
    with pytest.raises(ValueError, match=r"^SGD\.swap_ema_weights\(\): no moving average yet \(no step taken on "
                                         r"these parameters\)$"):
        tc.optim.SGD(p, use_ema=True).swap_ema_weights()
    sgd = tc.optim.SGD(p, momentum=0.9)
    sgd.step()
    with pytest.raises(ValueError, match=r"^Adam: the saved state has no 'm/0'$"):
        tc.optim.Adam(p).load_state_dict(sgd.state_dict())
    with pytest.raises(ValueError, match=r"^SGD: the saved state has no 'ema/0' \(it was saved without use_ema\)$"):
        tc.optim.SGD(p, momentum=0.9, use_ema=True).load_state_dict(sgd.state_dict())
