"""Turbofan report plots, saved as PNG beside report.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def plot_predictions(path: Path, test: pd.DataFrame, output: np.ndarray, true_rul: np.ndarray, last: np.ndarray,
                     pre: dict[str, Any]) -> Path:
    cap = pre["rul_cap"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    if pre["objective"] == "rul":
        truth = np.minimum(true_rul[last], cap)
        order = np.argsort(truth)
        axes[0].plot(truth[order], "o-", ms=3, label="true RUL (capped)")
        axes[0].plot(output[last][order], "o", ms=3, label="predicted RUL")
        axes[0].set(title="Last test cycle per engine, sorted by true RUL", xlabel="engine (sorted)",
                    ylabel="RUL (cycles)")
        axes[1].scatter(np.minimum(true_rul, cap), output, s=2, alpha=0.3)
        axes[1].plot([0, cap], [0, cap], "k--", lw=1)
        axes[1].axhline(pre["detector"]["threshold"], color="red", lw=1, label="alarm threshold")
        axes[1].set(title="Every test cycle", xlabel="true RUL (capped)", ylabel="predicted RUL")
    else:
        axes[0].scatter(true_rul, output, s=2, alpha=0.3)
        axes[0].axhline(pre["detector"]["threshold"], color="red", lw=1, label="alarm threshold")
        axes[0].set(title="Reconstruction error vs true RUL", xlabel="true RUL", ylabel="reconstruction error")
        axes[1].hist(output, bins=60)
        axes[1].set(title="Reconstruction error distribution", xlabel="error")
    for ax in axes:
        ax.legend(loc="best", fontsize=8) if ax.get_legend_handles_labels()[0] else None
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sensor_traces(path: Path, test: pd.DataFrame, alarm: np.ndarray, truth: np.ndarray, sensors: list[str],
                       engines: int = 4) -> Path:
    """Sensor traces of the engines that come closest to failure (most cycles inside the true horizon), alarm
    periods shaded red, the true failure horizon grey."""
    inside = pd.Series(truth, index=test.index).groupby(test["unit"]).sum()
    units = inside.sort_values(ascending=False, kind="stable").index[:engines]
    fig, axes = plt.subplots(len(units), 1, figsize=(11, 2.4 * len(units)), sharex=False, squeeze=False)
    for ax, unit in zip(axes[:, 0], units, strict=True):
        rows = (test["unit"] == unit).to_numpy()
        cycles = test.loc[rows, "cycle"].to_numpy()
        for sensor in sensors:
            values = test.loc[rows, sensor].to_numpy()
            ax.plot(cycles, (values - values.mean()) / (values.std() + 1e-9), lw=0.8, label=sensor)
        _shade(ax, cycles, truth[rows], "0.75", "true RUL <= threshold")
        _shade(ax, cycles, alarm[rows], "red", "alarm", alpha=0.18)
        ax.set(title=f"engine {unit}", ylabel="z-score")
        ax.legend(loc="upper left", fontsize=7, ncol=len(sensors) + 2)
    axes[-1, 0].set_xlabel("cycle")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _shade(ax, cycles: np.ndarray, mask: np.ndarray, color: str, label: str, alpha: float = 0.35) -> None:
    """One span per contiguous run of flagged cycles."""
    edges = np.diff(np.r_[0, mask.astype(int), 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        ax.axvspan(cycles[start] - 0.5, cycles[end] + 0.5, color=color, alpha=alpha, lw=0,
                   label=label if i == 0 else None)
