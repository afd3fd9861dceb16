"""Prediction intervals at any level by split conformal prediction on scaled forecast errors.

Calibration: the errors (actual - forecast) of forecasts made from rolling origins the model never trained on, each
divided by the series' level in the window read at that origin (so one table serves busy and quiet series), pooled
per week ahead (errors grow with the horizon). Their quantiles are kept on a grid of 0.5% steps, so any whole-percent
level can be asked for later without the errors themselves: a level-L interval runs from the forecast plus the
(100 - L)/200 quantile times the series' level to the forecast plus the (100 + L)/200 one, floored at zero sales.

Each tail is widened by (n + 1)/n, split conformal's finite-sample correction, so that with n exchangeable errors a
level-L interval covers at least L of new values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

GRID = np.round(np.linspace(0.0, 1.0, 201), 3)  # quantile levels kept: 0, 0.005, ..., 1
METHOD = "split conformal: scaled errors of rolling-origin forecasts, quantiles per week ahead"


def calibrate(errors_by_week: Sequence[np.ndarray]) -> dict[str, Any]:
    """The calibration table from each week ahead's scaled errors (1-d arrays, at least one error each)."""
    table = []
    for errors in errors_by_week:
        errors = np.asarray(errors, dtype=np.float64)
        if not errors.size:
            raise ValueError("no calibration errors for a week ahead: the rolling windows are too short")
        n = errors.size
        widened = np.clip(0.5 + (GRID - 0.5) * (n + 1) / n, 0.0, 1.0)
        table.append(np.quantile(errors, widened, method="inverted_cdf").round(5).tolist())
    return {"method": METHOD, "grid": GRID.tolist(), "scaled_error_quantiles": table,
            "errors_per_week": [int(np.size(e)) for e in errors_by_week]}


def quantile_names(levels: Sequence[float]) -> list[str]:
    """The quantiles that bound the given levels (in percent), lowest first: 80 -> "0.1", "0.9"."""
    names = {round((100 - level) / 200, 4) for level in levels} | {round((100 + level) / 200, 4) for level in levels}
    return [f"{q:g}" for q in sorted(names)]


def bounds(point: np.ndarray, scale: np.ndarray, calibration: dict[str, Any],
           levels: Sequence[float]) -> dict[str, np.ndarray]:
    """{quantile name: (series, horizon) bound} for forecasts `point` (series, horizon) of series whose levels are
    `scale` (series,), for each interval level in percent."""
    grid = np.asarray(calibration["grid"])
    table = np.asarray(calibration["scaled_error_quantiles"])  # (weeks, grid)
    week = np.minimum(np.arange(point.shape[1]) // 7, len(table) - 1)
    out = {}
    for name in quantile_names(levels):
        per_week = np.array([np.interp(float(name), grid, row) for row in table])
        out[name] = np.maximum(point + per_week[week][None, :] * np.asarray(scale)[:, None], 0.0)
    return out


def coverage(actual: np.ndarray, interval_bounds: dict[str, np.ndarray], levels: Sequence[float]) -> dict[str, float]:
    """{level: share of `actual` values within that level's interval}."""
    out = {}
    for level in levels:
        low, high = (interval_bounds[f"{round(q, 4):g}"] for q in ((100 - level) / 200, (100 + level) / 200))
        out[f"{level:g}"] = float(((actual >= low) & (actual <= high)).mean())
    return out
