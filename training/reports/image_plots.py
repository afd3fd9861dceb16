"""Image classifier report plots, saved as PNG beside report.json."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_mistakes(path: Path, images: np.ndarray, true: list[str], predicted: list[str], confidence: list[float],
                  columns: int = 8) -> Path:
    """A grid of misclassified test images (uint8, N x 32 x 32 x 3), each titled true -> predicted (confidence)."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.45, rows * 1.65))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, image, t, p, c in zip(np.atleast_1d(axes).ravel(), images, true, predicted, confidence, strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"{t}\n-> {p} {c:.0%}", fontsize=7)
    fig.suptitle("Most confident mistakes on the test images (true -> predicted)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(path: Path, history: list[dict[str, Any]]) -> Path:
    """Train/validation loss and validation accuracy per epoch, from train_log.jsonl."""
    epochs = [record["epoch"] for record in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    loss_ax.plot(epochs, [r.get("val_loss") for r in history], "o-", label="validation loss")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy (train: with label smoothing)", title="Loss")
    loss_ax.legend()
    acc_ax.plot(epochs, [r.get("val_accuracy") for r in history], "o-", color="tab:green", label="validation")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Validation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_vs_time(path: Path, seconds: list[float], accuracy: list[float], label: str) -> Path:
    """Test accuracy of each epoch's weights against the training wall time spent by then."""
    fig, ax = plt.subplots(figsize=(6, 4))
    minutes = np.asarray(seconds) / 60
    ax.plot(minutes, accuracy, "o-")
    # at most about ten labels (every step-th epoch, the best and the last): a label per point of a long run overlaps
    step, best, last = max(1, math.ceil(len(accuracy) / 10)), int(np.argmax(accuracy)), len(accuracy) - 1
    for i in sorted({*range(0, len(accuracy), step), best, last}):
        below = i == last != best  # the last point often sits beside the best one
        ax.annotate(f"{accuracy[i]:.1%}", (minutes[i], accuracy[i]), textcoords="offset points",
                    xytext=(0, -12 if below else 6), fontsize=7, ha="center")
    ax.set(xlabel="training wall time (minutes)", ylabel="test accuracy", title=f"Test accuracy per epoch ({label})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
