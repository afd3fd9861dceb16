"""Combinations of forecasters: the mean of all, the mean of the three best on the validation days, and weights
fitted on the validation days (non-negative least squares, weighted as the bottom level of WRMSSE weighs each
series, then normalised to sum to 1). Each is judged on the test days, which none of them saw."""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from training.metrics.wrmsse import WRMSSE

IN_SAMPLE = ("ensemble_fitted",)  # judged on the validation days that fitted it


def _combine(forecasts: dict[str, dict[str, np.ndarray]], weights: dict[str, float]) -> dict[str, np.ndarray]:
    """Every split the members forecast ("val", "test", and "future" where the evaluation made one)."""
    return {split: sum(w * forecasts[name][split] for name, w in weights.items())
            for split in next(iter(forecasts.values()))}


def series_weights(metric: WRMSSE) -> np.ndarray:
    """Per bottom series: its level-12 WRMSSE weight over its RMSSE scale (0 for a series that never sold)."""
    bottom = metric.aggregations[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.nan_to_num(metric.weights[-1] / metric.scales[-1], nan=0.0, posinf=0.0)
    return bottom.matrix.T @ ratio


def fitted_weights(forecasts: dict[str, dict[str, np.ndarray]], actual: np.ndarray,
                   metric: WRMSSE) -> dict[str, float]:
    names = list(forecasts)
    rows = np.sqrt(series_weights(metric))[:, None]
    design = np.stack([(forecasts[name]["val"] * rows).ravel() for name in names], axis=1)
    solution, _ = nnls(design, (actual * rows).ravel())
    if solution.sum() <= 0:
        solution = np.ones(len(names))
    return {name: float(w) for name, w in zip(names, solution / solution.sum(), strict=True) if w > 0}


def ensembles(forecasts: dict[str, dict[str, np.ndarray]], val_actual: np.ndarray,
              val_metric: WRMSSE) -> dict[str, dict]:
    """{label: {"forecast": {"val", "test"}, "weights": {model: weight}}}; none when there is only one model."""
    if len(forecasts) < 2:
        return {}
    equal = {name: 1 / len(forecasts) for name in forecasts}
    ranked = sorted(forecasts, key=lambda name: val_metric(val_actual, forecasts[name]["val"]))
    best3 = {name: 1 / min(3, len(ranked)) for name in ranked[:3]}
    fitted = fitted_weights(forecasts, val_actual, val_metric)
    out = {"ensemble_mean": equal, "ensemble_best3": best3, "ensemble_fitted": fitted}
    return {label: {"forecast": _combine(forecasts, weights), "weights": weights} for label, weights in out.items()}
