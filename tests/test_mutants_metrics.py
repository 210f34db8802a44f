"""Checks of fer_models/metrics.py that its mutation run (tests/mutation/run.sh) showed missing:
the exact text of a report, the edges of what is accepted (one class, one example), and
which function and which argument an error names."""
import numpy as np
import pytest

from fer_models.metrics import accuracy_interval, classification_report, confusion_matrix, format_report

# Two classes, five faces: cat is right 1 of 2 times and called cat twice; dog 2 of 3 and 3.
Y_TRUE, Y_PRED = [0, 0, 1, 1, 1], [0, 1, 1, 1, 0]
REPORT_TEXT = """\
              precision  recall  f1-score  support
         cat      0.500   0.500     0.500        2
         dog      0.667   0.667     0.667        3

    accuracy                        0.600        5
   macro avg      0.583   0.583     0.583        5
weighted avg      0.600   0.600     0.600        5

confusion matrix (rows: true class, columns: predicted class)
              cat  dog
         cat    1    1
         dog    1    2"""


def test_format_report_text_exactly():
    report = classification_report(Y_TRUE, Y_PRED, class_names=("cat", "dog"))
    assert format_report(report, confusion_matrix(Y_TRUE, Y_PRED, 2)) == REPORT_TEXT


def test_one_class_and_one_example_are_accepted():
    np.testing.assert_array_equal(confusion_matrix([0, 0], [0, 0], num_classes=1), [[2]])
    report = classification_report([0, 0, 0], [0, 0, 0], class_names=("only",))
    assert report["only"] == {"precision": 1.0, "recall": 1.0, "f1-score": 1.0, "support": 3}
    assert report["accuracy"] == 1.0
    low, high = accuracy_interval(1, 1)
    assert (low, high) == pytest.approx((1 / (1 + 1.96 ** 2), 1.0), rel=1e-9)   # Wilson for 1 of 1


@pytest.mark.parametrize("num_classes", [0, -3, 2.5])
def test_num_classes_must_be_a_positive_integer(num_classes):
    with pytest.raises(ValueError, match=r"^confusion_matrix: num_classes must be a positive integer, got "):
        confusion_matrix([0], [0], num_classes=num_classes)


@pytest.mark.parametrize("who, call", [
    ("confusion_matrix", lambda t, p: confusion_matrix(t, p, num_classes=3)),
    ("classification_report", lambda t, p: classification_report(t, p, class_names="abc")),
])
def test_errors_name_the_function_and_the_argument(who, call):
    with pytest.raises(ValueError, match=rf"^{who}: y_true must lie in \[0, 3\), got range \[0, 5\]$"):
        call([0, 5], [0, 1])
    with pytest.raises(ValueError, match=rf"^{who}: y_pred must lie in \[0, 3\), got range \[-1, 1\]$"):
        call([0, 1], [-1, 1])


def test_empty_inputs_are_refused_with_their_message():
    with pytest.raises(ValueError, match=r"^classification_report: class_names is empty$"):
        classification_report([0], [0], class_names=())
    with pytest.raises(ValueError, match=r"^classification_report: no examples \(y_true and y_pred are empty\)$"):
        classification_report([], [])
    report = classification_report(Y_TRUE, Y_PRED, class_names=("cat", "dog"))
    del report["accuracy"]
    with pytest.raises(ValueError, match=r"^format_report: report lacks \['accuracy'\]; pass the dict"):
        format_report(report, np.zeros((2, 2), int))


def test_safe_divide_takes_integer_counts():
    from fer_models.metrics import _safe_divide
    got = _safe_divide(np.array([1, 3, 0]), np.array([2, 0, 4]))     # int64 in, float64 out
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [0.5, 0.0, 0.0])
