"""Training curves and confusion-matrix figures (PNG, via matplotlib's Agg backend)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .classes import CLASSES


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> None:
    """The figure as an image file, written atomically (a full disk raises
    ``tinycnn.model.WriteError`` and leaves any earlier figure in place); then closed."""
    from tinycnn.model import write_atomic
    plt = _pyplot()
    try:
        fmt = Path(path).suffix[1:].lower() or "png"
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=80, format=fmt), suffix=f".tmp.{fmt}")
    finally:
        plt.close(fig)


def plot_history(history: list[dict], path) -> None:
    """Loss and accuracy per epoch, Training against PublicTest."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["loss"] for h in history], label="Training")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="PublicTest")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax2.plot(epochs, [h["acc"] for h in history], label="Training")
    ax2.plot(epochs, [h["val_acc"] for h in history], label="PublicTest")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(cm, path, title="confusion matrix", class_names=CLASSES) -> None:
    """Rows: true class; columns: predicted. Cells show counts, colour the row share."""
    plt = _pyplot()
    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    _save(fig, path)
