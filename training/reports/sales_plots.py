"""The sales report's figures: history, forecasts and actual sales of the test days; WRMSSE by aggregation level."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_forecasts(path: Path, data, forecasts: dict[str, np.ndarray], chosen: list[int], history_start: int,
                   band: tuple[str, np.ndarray, np.ndarray] | None = None) -> Path:
    """The sum of all series, then each chosen series: recent history, the actual test days, each forecast, and
    `band` (model, low, high) shaded around one model's forecast of each chosen series."""
    sales, dates = data.m5.sales, data.m5.calendar["date"].to_numpy()[data.m5.first_day - 1:]
    test = data.test_start
    panels = [("all series (sum)", sales.sum(axis=0), {k: v.sum(axis=0) for k, v in forecasts.items()}, None)]
    for i in chosen:
        ids = data.m5.ids.iloc[i]
        shade = (band[0], band[1][i], band[2][i]) if band is not None else None
        panels.append((f"{ids['item_id']} at {ids['store_id']}", sales[i], {k: v[i] for k, v in forecasts.items()},
                       shade))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 * len(panels)), squeeze=False)
    for ax, (title, actual, predicted, shade) in zip(axes[:, 0], panels, strict=True):
        ax.plot(dates[history_start:test], actual[history_start:test], color="0.55", lw=1, label="history")
        ax.plot(dates[test:test + actual.shape[0] - test], actual[test:], color="black", lw=1.4, label="actual")
        for label, values in predicted.items():
            ax.plot(dates[test:test + len(values)], values, lw=1.4, label=label)
        if shade is not None:
            label, low, high = shade
            ax.fill_between(dates[test:test + len(low)], low, high, alpha=0.2, label=f"{label} 80% interval")
        ax.axvline(dates[test], color="0.7", ls=":", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("units sold")
    axes[0, 0].legend(loc="upper left", fontsize=8, ncol=min(5, len(forecasts) + 2))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_levels(path: Path, per_level: dict[str, dict[str, float]]) -> Path:
    """RMSSE (weighted within each level) per aggregation level, one line per model."""
    fig, ax = plt.subplots(figsize=(9, 4))
    for label, levels in per_level.items():
        names = list(levels)
        ax.plot(range(1, len(names) + 1), list(levels.values()), marker="o", lw=1.2, label=label)
    ax.set_xticks(range(1, 13))
    ax.set_xlabel("aggregation level (1: total ... 12: item x store)")
    ax.set_ylabel("weighted RMSSE on the test days")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
