"""The M5 competition's metric: WRMSSE, the weighted root mean squared scaled error over 12 aggregation levels.

For every series of every level (the bottom series summed by state, store, category, department, item and their
crossings): RMSSE = sqrt(mean squared forecast error / mean squared one-step naive error in the training history,
counted from the series' first non-zero sale). Weights: each series' dollar sales over the last 28 training days,
normalised to sum to 1 within a level; WRMSSE is the mean over the levels of the weighted RMSSE sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# (level id, the id columns that group the bottom series; () is the total)
LEVELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Level1", ()), ("Level2", ("state_id",)), ("Level3", ("store_id",)), ("Level4", ("cat_id",)),
    ("Level5", ("dept_id",)), ("Level6", ("state_id", "cat_id")), ("Level7", ("state_id", "dept_id")),
    ("Level8", ("store_id", "cat_id")), ("Level9", ("store_id", "dept_id")), ("Level10", ("item_id",)),
    ("Level11", ("state_id", "item_id")), ("Level12", ("item_id", "store_id")),
)


@dataclass
class Aggregation:
    """The 0/1 matrix summing bottom series into one level's series, and those series' labels."""

    level: str
    labels: list[tuple[str, str]]  # (Agg_Level_1, Agg_Level_2) as in the official weights file
    matrix: np.ndarray  # (level series, bottom series)


def aggregations(ids: pd.DataFrame) -> list[Aggregation]:
    result = []
    for level, keys in LEVELS:
        if not keys:
            result.append(Aggregation(level, [("Total", "X")], np.ones((1, len(ids)), dtype=np.float32)))
            continue
        groups = ids.groupby(list(keys), sort=True).indices
        matrix = np.zeros((len(groups), len(ids)), dtype=np.float32)
        labels = []
        for row, (key, members) in enumerate(groups.items()):
            key = key if isinstance(key, tuple) else (key,)
            labels.append((key[0], key[1] if len(key) > 1 else "X"))
            matrix[row, members] = 1.0
        result.append(Aggregation(level, labels, matrix))
    return result


def naive_scale(history: np.ndarray) -> np.ndarray:
    """Per series: the mean squared day-to-day change from its first non-zero value on (NaN: never sold)."""
    started = np.cumsum(history > 0, axis=1) > 0
    diffs = np.diff(history, axis=1) ** 2
    mask = started[:, :-1]  # a change counts once the series had started before it
    counts = mask.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (diffs * mask).sum(axis=1) / counts, np.nan)


def level_weights(aggregations_: list[Aggregation], dollars: np.ndarray) -> list[np.ndarray]:
    """Per level, each series' share of the level's dollar sales (`dollars`: per bottom series, last 28 days)."""
    out = []
    for agg in aggregations_:
        value = agg.matrix @ dollars
        out.append(value / value.sum() if value.sum() > 0 else np.full(len(value), 1 / len(value)))
    return out


@dataclass
class WRMSSE:
    """Scales and weights fixed from the training history, then any forecast of the next `horizon` days scored."""

    aggregations: list[Aggregation]
    scales: list[np.ndarray]
    weights: list[np.ndarray]

    @classmethod
    def fit(cls, ids: pd.DataFrame, history: np.ndarray, prices: np.ndarray) -> WRMSSE:
        """`history`: (series, days) training sales; `prices`: the same days' sell prices (NaN: not on sale)."""
        aggs = aggregations(ids)
        dollars = np.nansum(history[:, -28:] * prices[:, -28:], axis=1)
        return cls(aggs, [naive_scale(agg.matrix @ history) for agg in aggs], level_weights(aggs, dollars))

    def per_level(self, actual: np.ndarray, forecast: np.ndarray) -> dict[str, float]:
        scores = {}
        for agg, scale, weight in zip(self.aggregations, self.scales, self.weights, strict=True):
            error = ((agg.matrix @ actual - agg.matrix @ forecast) ** 2).mean(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                rmsse = np.sqrt(error / scale)
            usable = np.isfinite(rmsse)  # a series that never sold has no scale and no weight
            scores[agg.level] = float((weight[usable] * rmsse[usable]).sum())
        return scores

    def __call__(self, actual: np.ndarray, forecast: np.ndarray) -> float:
        return float(np.mean(list(self.per_level(actual, forecast).values())))

    def weight_table(self) -> pd.DataFrame:
        """Level_id, Agg_Level_1, Agg_Level_2, Weight: the layout of the organisers' weights_validation.csv."""
        rows = [(agg.level, a, b, float(w)) for agg, weight in zip(self.aggregations, self.weights, strict=True)
                for (a, b), w in zip(agg.labels, weight, strict=True)]
        return pd.DataFrame(rows, columns=["Level_id", "Agg_Level_1", "Agg_Level_2", "Weight"])
