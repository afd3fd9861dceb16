"""`modelyard compare --plot`: several runs' validation curves in one PNG."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def read_history(ckpt: Path) -> list[dict]:
    path = Path(ckpt) / "train_log.jsonl"
    if not path.is_file():
        raise ValueError(f"{path}: missing; the run's per-epoch log is what the plot draws")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_validation_curves(path: Path, checkpoints: list[Path]) -> Path:
    """Each run's validation metrics per epoch (every `val_*` key all runs share), a panel per metric, a line per
    run labelled with its folder name."""
    histories = {Path(c).name or str(c): read_history(Path(c)) for c in checkpoints}
    shared = None
    for history in histories.values():
        keys = {k for record in history for k in record if k.startswith("val_")}
        shared = keys if shared is None else shared & keys
    metrics = sorted(shared or [])
    if not metrics:
        raise ValueError("the runs share no validation metric to plot (are they the same task?)")
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for name, history in histories.items():
            ax.plot([r["epoch"] for r in history], [r.get(metric) for r in history], "o-", ms=3, label=name)
        ax.set(xlabel="epoch", ylabel=metric.removeprefix("val_").replace("_", " "), title=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
