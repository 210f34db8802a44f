"""Confusion matrix and per-class precision / recall / F1, as scikit-learn computes them.

    cm = confusion_matrix(y_true, y_pred)              # (7, 7), rows true, columns predicted
    report = classification_report(y_true, y_pred)     # dict, scikit-learn's output_dict layout
    print(format_report(report, cm))

For class k, with ``cm`` as above:

    precision_k = cm[k, k] / cm[:, k].sum()    of the faces called k, the share that are k
    recall_k    = cm[k, k] / cm[k, :].sum()    of the faces that are k, the share called k
    f1_k        = 2 * precision_k * recall_k / (precision_k + recall_k)

A ratio whose denominator is 0 (a class never predicted, or never present) is 0.0,
as scikit-learn's ``zero_division=0``. FER-2013 is imbalanced (disgust is 1.5% of
it), so accuracy alone hides a model that never says "disgust": read the macro
average, which weighs every class equally.
"""
from __future__ import annotations

import numpy as np

from .classes import CLASSES, NUM_CLASSES


def confusion_matrix(y_true, y_pred, num_classes=NUM_CLASSES) -> np.ndarray:
    """Counts of (true, predicted) label pairs.

    Args:
        y_true, y_pred: integer labels (N,) in [0, num_classes).
        num_classes: K.
    Returns:
        int64 (K, K); ``cm[i, j]`` = number of examples of class i predicted as j.
    """
    return _confusion_matrix("confusion_matrix", y_true, y_pred, num_classes)


def _confusion_matrix(where, y_true, y_pred, num_classes) -> np.ndarray:
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"{where}: num_classes must be a positive integer, got {num_classes!r}")
    num_classes = int(num_classes)
    y_true = _check_labels(where, "y_true", y_true, num_classes)
    y_pred = _check_labels(where, "y_pred", y_pred, num_classes)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{where}: y_true and y_pred must have the same length, "
                         f"got {y_true.shape} and {y_pred.shape}")
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def classification_report(y_true, y_pred, class_names=CLASSES) -> dict:
    """Accuracy, per-class precision / recall / F1 / support, and their averages.

    Args:
        y_true, y_pred: integer labels (N,), N >= 1, in [0, len(class_names)).
        class_names: the name of each label, in label order.
    Returns:
        A dict in scikit-learn's ``output_dict`` layout::

            {"angry": {"precision": p, "recall": r, "f1-score": f, "support": n}, ...,
             "accuracy": a,
             "macro avg": {...}, "weighted avg": {...}}

        Floats are Python floats, supports ints. "macro avg" is the plain mean over
        all ``len(class_names)`` classes (absent ones included, with 0.0);
        "weighted avg" weighs each class by its support.
    """
    class_names = tuple(class_names)
    k = len(class_names)
    if k == 0:
        raise ValueError("classification_report: class_names is empty")
    cm = _confusion_matrix("classification_report", y_true, y_pred, k)
    n = int(cm.sum())
    if n == 0:
        raise ValueError("classification_report: no examples (y_true and y_pred are empty)")
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)

    report = {}
    for i, name in enumerate(class_names):
        report[name] = {"precision": float(precision[i]), "recall": float(recall[i]),
                        "f1-score": float(f1[i]), "support": int(support[i])}
    report["accuracy"] = float(tp.sum() / n)
    for key, average in (("macro avg", lambda v: v.sum() / k), ("weighted avg", lambda v: (support @ v) / n)):
        report[key] = {"precision": float(average(precision)), "recall": float(average(recall)),
                       "f1-score": float(average(f1)), "support": n}
    return report


def format_report(report: dict, cm) -> str:
    """A text table of ``classification_report``'s figures, then the confusion matrix.

    Args:
        report: as returned by ``classification_report``.
        cm: (K, K) confusion matrix with K the number of classes in ``report``.
    Returns:
        A multi-line string (no trailing newline), e.g.::

                          precision  recall  f1-score  support
                   angry      0.500   0.667     0.571        3
                   ...
                accuracy                        0.600       10
               macro avg      ...

            confusion matrix (rows: true class, columns: predicted class)
                     angry  disgust  ...
    """
    summary_keys = ("accuracy", "macro avg", "weighted avg")
    names = [key for key in report if key not in summary_keys]
    missing = [key for key in summary_keys if key not in report]
    if missing:
        raise ValueError(f"format_report: report lacks {missing}; pass the dict from classification_report")
    cm = np.asarray(cm)
    if cm.shape != (len(names), len(names)):
        raise ValueError(f"format_report: cm must be ({len(names)}, {len(names)}) for the "
                         f"{len(names)} classes of the report, got shape {cm.shape}")

    width = max(len(name) for name in names + ["weighted avg"])
    lines = [f"{'':>{width}}  precision  recall  f1-score  support"]
    row = "{:>{w}}  {:>9.3f}  {:>6.3f}  {:>8.3f}  {:>7d}"
    for name in names:
        r = report[name]
        lines.append(row.format(name, r["precision"], r["recall"], r["f1-score"], r["support"], w=width))
    lines.append("")
    total = report["macro avg"]["support"]
    lines.append(f"{'accuracy':>{width}}  {'':>9}  {'':>6}  {report['accuracy']:>8.3f}  {total:>7d}")
    for key in ("macro avg", "weighted avg"):
        r = report[key]
        lines.append(row.format(key, r["precision"], r["recall"], r["f1-score"], r["support"], w=width))

    lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
    cells = [max(len(name), len(str(int(cm[:, j].max())))) for j, name in enumerate(names)]
    lines.append(f"{'':>{width}}  " + "  ".join(f"{name:>{c}}" for name, c in zip(names, cells)))
    for name, counts in zip(names, cm):
        lines.append(f"{name:>{width}}  " + "  ".join(f"{int(n):>{c}d}" for n, c in zip(counts, cells)))
    return "\n".join(lines)


def accuracy_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for an accuracy of ``correct`` out of ``n`` (95% for z=1.96).

    A test set is a sample: on PrivateTest's 3,589 faces an accuracy near 65% is known
    to about +-1.6 points, so two models closer than that are not told apart by it.
    Wilson's interval, unlike p +- z*sqrt(p(1-p)/n), stays inside [0, 1] and is right
    for small n too."""
    if n <= 0:
        raise ValueError(f"accuracy_interval: n must be positive, got {n}")
    if not 0 <= correct <= n:
        raise ValueError(f"accuracy_interval: correct must lie in [0, {n}], got {correct}")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0.0 where den == 0 (scikit-learn's zero_division=0)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _check_labels(where: str, name: str, y, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{where}: {name} must be 1-D (N,) labels, got shape {y.shape}")
    if y.size == 0:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: {name} must hold integer labels, got dtype {y.dtype} "
                         f"(for scores of shape (N, K), pass scores.argmax(axis=1))")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"{where}: {name} must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


__all__ = ["confusion_matrix", "classification_report", "format_report"]
