"""The generator report's figure: test perplexity of each epoch's weights against training wall time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_perplexity_over_time(path: Path, curve: list[dict[str, float]], title: str) -> Path:
    seconds = [point["seconds"] for point in curve]
    perplexity = [point["perplexity"] for point in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(seconds, perplexity, marker="o", lw=1.5)
    for point in curve:
        ax.annotate(f"epoch {point['epoch']}", (point["seconds"], point["perplexity"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    ax.set_yscale("log")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("test perplexity (tokens, log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
