"""Confusion matrix and classification report, checked against numbers worked out by hand."""
import numpy as np
import pytest

from fer_models.classes import CLASSES
from fer_models.metrics import classification_report, confusion_matrix, format_report

# Four classes; "d" is present once but never predicted, so its precision is 0/0 -> 0.0.
NAMES = ("a", "b", "c", "d")
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
Y_PRED = np.array([0, 0, 1, 2, 1, 2, 2, 2, 0, 2, 2])
# By hand, row = true class, column = predicted class:
#   true a: predicted a, a, b, c -> [2, 1, 1, 0]
#   true b: predicted b, c       -> [0, 1, 1, 0]
#   true c: predicted c, c, a, c -> [1, 0, 3, 0]
#   true d: predicted c          -> [0, 0, 1, 0]
CM = np.array([[2, 1, 1, 0],
               [0, 1, 1, 0],
               [1, 0, 3, 0],
               [0, 0, 1, 0]])
# Column sums (times predicted): a 3, b 2, c 6, d 0.  Row sums (support): 4, 2, 4, 1.
EXPECTED = {
    "a": {"precision": 2 / 3, "recall": 2 / 4, "f1-score": 4 / 7, "support": 4},   # 2PR/(P+R) = (2/3)/(7/6)
    "b": {"precision": 1 / 2, "recall": 1 / 2, "f1-score": 1 / 2, "support": 2},
    "c": {"precision": 3 / 6, "recall": 3 / 4, "f1-score": 3 / 5, "support": 4},   # 0.75 / 1.25
    "d": {"precision": 0.0, "recall": 0 / 1, "f1-score": 0.0, "support": 1},
    "accuracy": 6 / 11,
    # macro: plain mean over the 4 classes
    "macro avg": {"precision": 5 / 12,          # (2/3 + 1/2 + 1/2 + 0) / 4
                  "recall": 7 / 16,             # (1/2 + 1/2 + 3/4 + 0) / 4
                  "f1-score": 117 / 280,        # (4/7 + 1/2 + 3/5 + 0) / 4
                  "support": 11},
    # weighted by support 4, 2, 4, 1 out of 11
    "weighted avg": {"precision": 17 / 33,      # (4*2/3 + 2*1/2 + 4*1/2 + 0) / 11
                     "recall": 6 / 11,          # (2 + 1 + 3 + 0) / 11, always the accuracy
                     "f1-score": 199 / 385,     # (4*4/7 + 2*1/2 + 4*3/5 + 0) / 11
                     "support": 11},
}


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED, num_classes=4)
    np.testing.assert_array_equal(cm, CM)
    assert cm.dtype == np.int64
    assert cm.sum() == len(Y_TRUE)


def test_confusion_matrix_default_has_seven_classes():
    cm = confusion_matrix([3, 3, 6], [3, 5, 6])
    assert cm.shape == (7, 7)
    assert cm[3, 3] == 1 and cm[3, 5] == 1 and cm[6, 6] == 1 and cm.sum() == 3


def test_classification_report_by_hand():
    report = classification_report(Y_TRUE, Y_PRED, class_names=NAMES)
    assert list(report) == ["a", "b", "c", "d", "accuracy", "macro avg", "weighted avg"]
    assert report["accuracy"] == pytest.approx(EXPECTED["accuracy"])
    for key in ("a", "b", "c", "d", "macro avg", "weighted avg"):
        for field in ("precision", "recall", "f1-score"):
            assert report[key][field] == pytest.approx(EXPECTED[key][field]), (key, field)
        assert report[key]["support"] == EXPECTED[key]["support"]
        assert isinstance(report[key]["support"], int)


def test_classification_report_perfect_and_default_names():
    y = np.array([0, 1, 2, 3, 4, 5, 6, 6])
    report = classification_report(y, y)
    assert [k for k in report if k in CLASSES] == list(CLASSES)
    assert report["accuracy"] == 1.0
    assert report["surprise"] == {"precision": 1.0, "recall": 1.0, "f1-score": 1.0, "support": 2}
    assert report["macro avg"]["f1-score"] == 1.0 and report["weighted avg"]["recall"] == 1.0


def test_class_never_present_nor_predicted_scores_zero():
    report = classification_report([0, 0, 1], [0, 1, 1], class_names=("x", "y", "z"))
    assert report["z"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
    # the macro average still counts z: (1 + 1/2 + 0) / 3 for precision
    assert report["macro avg"]["precision"] == pytest.approx(0.5)


def test_format_report_shows_figures_and_matrix():
    report = classification_report(Y_TRUE, Y_PRED, class_names=NAMES)
    text = format_report(report, CM)
    lines = text.splitlines()
    assert "precision" in lines[0] and "recall" in lines[0] and "f1-score" in lines[0]
    row_a = next(line for line in lines if line.split()[:1] == ["a"])
    assert row_a.split() == ["a", "0.667", "0.500", "0.571", "4"]
    assert any(line.split() == ["accuracy", "0.545", "11"] for line in lines)
    assert any(line.split() == ["macro", "avg", "0.417", "0.438", "0.418", "11"] for line in lines)
    assert "confusion matrix (rows: true class, columns: predicted class)" in lines
    matrix_rows = lines[lines.index("confusion matrix (rows: true class, columns: predicted class)") + 2:]
    assert [line.split() for line in matrix_rows] == [["a", "2", "1", "1", "0"], ["b", "0", "1", "1", "0"],
                                                      ["c", "1", "0", "3", "0"], ["d", "0", "0", "1", "0"]]


def test_format_report_with_fer_classes():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 7, 300), rng.integers(0, 7, 300)
    text = format_report(classification_report(y_true, y_pred), confusion_matrix(y_true, y_pred))
    for name in CLASSES:
        assert name in text


@pytest.mark.parametrize("y_true, y_pred, match", [
    ([0, 1], [0], "same length"),
    ([0.0, 1.0], [0, 1], "integer labels"),
    ([0, 7], [0, 1], r"\[0, 7\)"),
    ([[0, 1]], [[0, 1]], "1-D"),
])
def test_bad_labels_raise_clear_errors(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(y_true, y_pred)
    with pytest.raises(ValueError, match="classification_report"):
        classification_report(y_true, y_pred)


def test_empty_report_and_mismatched_matrix_raise():
    with pytest.raises(ValueError, match="no examples"):
        classification_report([], [])
    report = classification_report(Y_TRUE, Y_PRED, class_names=NAMES)
    with pytest.raises(ValueError, match=r"\(4, 4\).*got shape \(7, 7\)"):
        format_report(report, np.zeros((7, 7), int))


def test_accuracy_interval_is_wilsons():
    from fer_models.metrics import accuracy_interval
    # Wilson's 95% interval for 8 of 10, as tabulated (Newcombe 1998: 0.4902-0.9433)
    low, high = accuracy_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    # PrivateTest-sized: about +-1.6 points around 65%, nearly the normal approximation
    low, high = accuracy_interval(2333, 3589)
    p = 2333 / 3589
    assert (high - low) / 2 == pytest.approx(1.96 * np.sqrt(p * (1 - p) / 3589), rel=1e-3)
    assert accuracy_interval(0, 5)[0] == pytest.approx(0.0, abs=1e-12)
    assert accuracy_interval(5, 5)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n must be positive"):
        accuracy_interval(0, 0)
    with pytest.raises(ValueError, match=r"correct must lie in \[0, 3\]"):
        accuracy_interval(4, 3)
