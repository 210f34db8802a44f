"""Checks of tinycnn/losses.py that its mutation run (tests/mutation/run.sh) showed missing:
dtypes promised by the docstrings, the refusal of every kind of bad soft target, each
error message's figures, and balanced class weights worked out by hand."""
import numpy as np
import pytest

import tinycnn as tc
from tinycnn.losses import balanced_class_weights, softmax_cross_entropy, target_probabilities


def test_gradient_and_targets_are_float32():
    logits = tc.Tensor(np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], np.float32), requires_grad=True)
    softmax_cross_entropy(logits, np.array([2, 0]), label_smoothing=0.1).backward()
    assert logits.grad.dtype == np.float32
    onehot = target_probabilities(np.array([2, 0]), 2, 3, "here")
    assert onehot.dtype == np.float32
    np.testing.assert_array_equal(onehot, [[0, 0, 1], [1, 0, 0]])
    soft = target_probabilities(np.array([[0.25, 0.75, 0.0]]), 1, 3, "here")   # float64 in
    assert soft.dtype == np.float32
    np.testing.assert_array_equal(soft, [[0.25, 0.75, 0.0]])


@pytest.mark.parametrize("targets", [
    [[1.5, -0.5, 0.0]],          # a row summing to 1 with a negative entry
    [[np.nan, 0.5, 0.5]],        # NaN: every comparison with it is False
    [[np.inf, 0.0, 0.0]],
    [[0.5, 0.51, 0.0]],          # sums to 1.01, ten times the tolerance
])
def test_soft_targets_that_are_not_probabilities_are_refused(targets):
    with pytest.raises(ValueError, match=r"^who: soft targets must be probabilities \(non-negative rows summing to 1\)$"):
        target_probabilities(np.array(targets), 1, 3, "who")


def test_soft_targets_of_the_wrong_shape_and_integer_rows_are_refused():
    with pytest.raises(ValueError, match=r"^who: soft targets must have shape \(1, 3\) for logits \(1, 3\), got \(1, 2\)$"):
        target_probabilities(np.array([[0.5, 0.5]]), 1, 3, "who")
    # a 2-D integer array is not soft targets (only float arrays are), so it is refused as labels
    with pytest.raises(ValueError, match=r"^who: labels must be 1 integers .* got dtype int64 shape \(1, 3\)$"):
        target_probabilities(np.array([[0, 0, 1]], np.int64), 1, 3, "who")


def test_loss_errors_name_the_loss_and_the_figures():
    with pytest.raises(ValueError, match=r"^softmax_cross_entropy: a batch of 0 examples has no loss \(logits \(0, 3\)\)$"):
        softmax_cross_entropy(tc.Tensor(np.zeros((0, 3), np.float32)), np.array([], np.int64))
    logits = np.zeros((2, 3), np.float32)
    logits[1, 2] = np.inf
    logits[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"^softmax_cross_entropy: logits \(2, 3\) hold NaN or inf, first at \(1, 0\)$"):
        softmax_cross_entropy(tc.Tensor(logits), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"^softmax_cross_entropy: labels must lie in \[0, 3\)"):
        softmax_cross_entropy(tc.Tensor(np.zeros((2, 3), np.float32)), np.array([0, 3]))


def test_balanced_class_weights_by_hand():
    # 6 labels, 4 classes; counts 3, 2, 0, 1: n / (K * count) = 6/12, 6/8, absent -> 0, 6/4
    weights = balanced_class_weights(np.array([0, 0, 0, 1, 1, 3]), 4)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights, [0.5, 0.75, 0.0, 1.5], rtol=1e-7)
    # balanced: every present class then carries the same total weight
    np.testing.assert_allclose(weights * [3, 2, 0, 1], [1.5, 1.5, 0.0, 1.5], rtol=1e-7)


def test_balanced_class_weights_with_the_last_classes_absent():
    # bincount alone would stop at the largest label: the absent classes 2 and 3 still get 0
    np.testing.assert_allclose(balanced_class_weights(np.array([0, 1, 1]), 4), [0.75, 0.375, 0.0, 0.0], rtol=1e-7)
