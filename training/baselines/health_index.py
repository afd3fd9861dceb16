"""Statistical alert baseline: a linear health index of the sensors, smoothed causally per engine with
statsmodels' simple exponential smoothing (the one-step forecasts of an ARIMA(0,1,1)), alarming below a threshold.

Why smoothing and not residuals: degradation is a slow drift of the level; residuals of a model that tracks the level
hide exactly that drift, while the smoothed level exposes it with the sensor noise removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LinearRegression
from statsmodels.tsa.holtwinters import SimpleExpSmoothing

from training.metrics.rul import best_threshold, threshold_alarms

SMOOTHING = 0.3


@dataclass
class HealthIndexBaseline:
    regression: LinearRegression
    threshold: float = 0.0

    @classmethod
    def fit(cls, features: np.ndarray, health: np.ndarray) -> HealthIndexBaseline:
        """`health` is 1 while healthy falling to 0 at failure (capped RUL / cap)."""
        return cls(LinearRegression().fit(features, health))

    def score(self, features: np.ndarray, units: np.ndarray) -> np.ndarray:
        raw = self.regression.predict(features)
        smoothed = np.empty_like(raw)
        for unit in np.unique(units):
            rows = np.flatnonzero(units == unit)
            series = raw[rows]
            if len(series) < 2:
                smoothed[rows] = series
                continue
            fit = SimpleExpSmoothing(series, initialization_method="known", initial_level=series[0]).fit(
                smoothing_level=SMOOTHING, optimized=False)
            # fittedvalues[t] uses readings up to t-1; shifting by one adds reading t and stays causal.
            smoothed[rows] = np.r_[fit.fittedvalues[1:], fit.forecast(1)]
        return smoothed

    def calibrate(self, features: np.ndarray, units: np.ndarray, truth: np.ndarray) -> None:
        self.threshold = best_threshold(self.score(features, units), truth, alarm_when_high=False)

    def alarms(self, features: np.ndarray, units: np.ndarray) -> np.ndarray:
        return threshold_alarms(self.score(features, units), self.threshold, alarm_when_high=False)
