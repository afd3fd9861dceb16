"""Classifier report plots (news, images), saved as PNG beside report.json."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_confusion_matrix(path: Path, matrix: np.ndarray, labels: list[str], what: str = "test rows") -> Path:
    """Counts, with each row's share of its true class as the colour (so rare classes are as readable)."""
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5 + 0.25 * max(0, len(labels) - 4), 4.8 + 0.25 * max(0, len(labels) - 4)))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="true", title=f"Confusion matrix ({what})")
    plt.setp(ax.get_xticklabels(), rotation=45 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    fig.colorbar(image, ax=ax, label="share of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
