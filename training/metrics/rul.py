"""Remaining-useful-life metrics: RMSE, the NASA/PHM08 asymmetric score, and per-cycle alert quality."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_fscore_support


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, float) - np.asarray(true, float)) ** 2)))


def nasa_score(pred: np.ndarray, true: np.ndarray) -> float:
    """PHM08 score: late predictions (pred > true) cost more than early ones: exp(d/10)-1 vs exp(-d/13)-1."""
    d = np.asarray(pred, float) - np.asarray(true, float)
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)))


def alert_metrics(alarm: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    precision, recall, f1, _ = precision_recall_fscore_support(truth.astype(bool), alarm.astype(bool),
                                                               average="binary", zero_division=0)
    return {"alert_precision": float(precision), "alert_recall": float(recall), "alert_f1": float(f1)}


def threshold_alarms(score: np.ndarray, threshold: float, alarm_when_high: bool) -> np.ndarray:
    """Alarm where the score crosses the threshold: above it (an anomaly score) or below it (a predicted RUL)."""
    return score >= threshold if alarm_when_high else score <= threshold


def best_threshold(score: np.ndarray, truth: np.ndarray, alarm_when_high: bool) -> float:
    """The score threshold that maximises alert F1 on (validation) data; candidates are score quantiles."""
    candidates = np.unique(np.quantile(score, np.linspace(0.01, 0.99, 197)))
    best, best_f1 = float(candidates[0]), -1.0
    for threshold in candidates:
        f1 = alert_metrics(threshold_alarms(score, threshold, alarm_when_high), truth)["alert_f1"]
        if f1 > best_f1:
            best, best_f1 = float(threshold), f1
    return best
