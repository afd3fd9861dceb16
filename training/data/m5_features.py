"""Features for forecasting M5 sales, built on whole arrays or columns at once (numpy on the day matrix for the
networks, polars for the gradient-boosted trees' table), never row by row in Python.

Covariates are what is known for every day in advance, the days to forecast included: the calendar (weekday, month,
events, SNAP for the series' state) and the price (relative to the item's own price so far, its change over a week,
whether it is on sale at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

COVARIATES = ["wday_sin", "wday_cos", "month_sin", "month_cos", "event", "snap", "relative_price", "price_change",
              "priced"]
ID_FIELDS = ["item_id", "dept_id", "cat_id", "store_id", "state_id"]
HORIZON = 28


def calendar_covariates(calendar: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per calendar day: weekday and month on the unit circle, an event flag, and SNAP per state."""
    wday = calendar["wday"].to_numpy(dtype=np.float32) - 1
    month = calendar["month"].to_numpy(dtype=np.float32) - 1
    out = {"wday_sin": np.sin(2 * np.pi * wday / 7), "wday_cos": np.cos(2 * np.pi * wday / 7),
           "month_sin": np.sin(2 * np.pi * month / 12), "month_cos": np.cos(2 * np.pi * month / 12),
           "event": calendar["event_name_1"].notna().to_numpy(dtype=np.float32)}
    out.update({column: calendar[column].to_numpy(dtype=np.float32) for column in calendar.columns
                if column.startswith("snap_")})
    return {k: v.astype(np.float32) for k, v in out.items()}


def price_covariates(prices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(relative price, 7-day change, priced) per series and day. Relative: over the mean of the item's prices up to
    that day (causal: no later price leaks in); 1 and 0 where there is no price."""
    priced = np.isfinite(prices)
    filled = np.where(priced, prices, 0.0)
    running = np.cumsum(filled, axis=1) / np.maximum(np.cumsum(priced, axis=1), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(priced & (running > 0), prices / running, 1.0)
        week_ago = np.concatenate([np.full((len(prices), 7), np.nan, dtype=prices.dtype), prices[:, :-7]], axis=1)
        change = np.where(priced & np.isfinite(week_ago) & (week_ago > 0), prices / week_ago - 1.0, 0.0)
    return relative.astype(np.float32), change.astype(np.float32), priced.astype(np.float32)


def day_covariates(calendar: pd.DataFrame, prices: np.ndarray, states: list[str], first_day: int) -> np.ndarray:
    """(series, days, len(COVARIATES)) for the days prices cover (from d_first_day to the calendar's end)."""
    days = prices.shape[1]
    cal = {k: v[first_day - 1:first_day - 1 + days] for k, v in calendar_covariates(calendar).items()}
    return series_covariates(cal, prices, states)


def series_covariates(calendar: dict[str, np.ndarray], prices: np.ndarray, states: list[str]) -> np.ndarray:
    """The covariates from calendar arrays (calendar_covariates, cut to the days of `prices`) and daily prices."""
    series, days = prices.shape
    relative, change, priced = price_covariates(prices)
    out = np.empty((series, days, len(COVARIATES)), dtype=np.float32)
    for i, name in enumerate(COVARIATES[:5]):
        out[:, :, i] = calendar[name][None, :days]
    snap = np.stack([calendar.get(f"snap_{state}", np.zeros(days, dtype=np.float32))[:days] for state in states])
    out[:, :, 5], out[:, :, 6], out[:, :, 7], out[:, :, 8] = snap, relative, change, priced
    return out


@dataclass
class IdVocabulary:
    """Hierarchy ids as embedding indices; 0 stands for an id the model never saw (a posted series)."""

    values: dict[str, list[str]]

    @classmethod
    def fit(cls, ids: pd.DataFrame) -> IdVocabulary:
        return cls({field: sorted(ids[field].unique().tolist()) for field in ID_FIELDS})

    def sizes(self) -> list[int]:
        return [len(self.values[field]) + 1 for field in ID_FIELDS]

    def encode(self, ids: pd.DataFrame) -> np.ndarray:
        columns = []
        for field in ID_FIELDS:
            index = {value: i + 1 for i, value in enumerate(self.values[field])}
            column = ids[field] if field in ids else pd.Series([None] * len(ids))
            columns.append(column.map(index).fillna(0).to_numpy(dtype=np.int64))
        return np.stack(columns, axis=1)


# --- the trees' table (polars) ------------------------------------------------------------------------------------

LAG_STEPS = (0, 7, 14, 21)  # added to the bucket's shift: lag_7, lag_14, ... for the first week ahead
ROLLING_WINDOWS = (7, 28, 56)


def long_table(sales: np.ndarray, started: np.ndarray, covariates: np.ndarray, ids: np.ndarray, days: int,
               first: int = 0, first_series: int = 0):
    """One row per series and day for days [first, days) (sales past the history are null), with covariates and id
    codes; `day` and `series` keep their indices in the whole arrays (`first_series` for a slice of the series).
    Sales before a series' first sale are null: not yet on sale is not zero demand."""
    import polars as pl

    series, history = sales.shape
    span = days - first
    padded = np.full((series, span), np.nan, dtype=np.float32)
    padded[:, :max(history - first, 0)] = np.where(started[:, first:], sales[:, first:], np.nan)
    columns = {"series": np.repeat(np.arange(first_series, first_series + series, dtype=np.int32), span),
               "day": np.tile(np.arange(first, days, dtype=np.int32), series),
               "sales": padded.reshape(-1)}
    columns.update({name: covariates[:, first:days, i].reshape(-1) for i, name in enumerate(COVARIATES)})
    columns.update({field: np.repeat(ids[:, i].astype(np.int32), span) for i, field in enumerate(ID_FIELDS)})
    return pl.DataFrame(columns).with_columns(pl.col("sales").fill_nan(None))


def lag_features(table, shift: int):
    """Lags and rolling statistics of sales that are at least `shift` days old, per series (for forecasting up to
    `shift` days ahead without feeding forecasts back in)."""
    import polars as pl

    sales = pl.col("sales")
    exprs = [sales.shift(shift + step).over("series").alias(f"lag_{shift + step}") for step in LAG_STEPS]
    exprs.append(sales.shift(364).over("series").alias("lag_364"))
    for window in ROLLING_WINDOWS:
        shifted = sales.shift(shift)
        exprs.append(shifted.rolling_mean(window, min_samples=1).over("series").alias(f"mean_{window}"))
        exprs.append(shifted.rolling_std(window, min_samples=2).over("series").alias(f"std_{window}"))
    return table.with_columns([expr.cast(pl.Float32) for expr in exprs])  # float64 would double the table


def feature_columns(shift: int) -> list[str]:
    return ([f"lag_{shift + step}" for step in LAG_STEPS] + ["lag_364"] +
            [f"{stat}_{w}" for w in ROLLING_WINDOWS for stat in ("mean", "std")] + COVARIATES + ID_FIELDS)


LOOKBACK = 364  # the oldest day any feature reads: lag_364 (the rolling windows reach back at most 28 + 56)
CHUNK_ROWS = 4_000_000  # rows of the long table built at once: about 0.5 GB with its features


@dataclass
class TreeMatrix:
    """One week-ahead bucket's training rows and the rows it forecasts, as float32 matrices over feature_columns."""

    columns: list[str]
    x: np.ndarray  # (rows, features): every series' days in the training window on which it was on sale
    y: np.ndarray  # (rows,) their sales
    predict_x: np.ndarray  # (series * 7, features): the bucket's week to forecast
    predict_series: np.ndarray
    predict_day: np.ndarray


def tree_matrix(sales: np.ndarray, started: np.ndarray, covariates: np.ndarray, ids: np.ndarray, origin: int,
                shift: int, history: int) -> TreeMatrix:
    """The trees' rows for forecasting days origin+shift-6 .. origin+shift from sales up to `origin`, trained on the
    `history` days up to it. Built a slice of series at a time into matrices allocated once, because the whole
    long table with its lag columns is about 2.5 times the size of the rows kept (full M5: 59M rows x 32 columns
    against 33M x 31), and the data frame handed to a tree library would be a second copy."""
    import polars as pl

    columns = feature_columns(shift)
    series, days = len(sales), origin + 1 + HORIZON
    low, first = max(0, origin - history + 1), max(0, origin - history + 1 - LOOKBACK)
    train_mask = started[:, low:origin + 1]
    x = np.empty((int(train_mask.sum()), len(columns)), dtype=np.float32)
    y = np.empty(len(x), dtype=np.float32)
    predict = [origin + shift - 6, origin + shift]
    predict_x = np.empty((series * 7, len(columns)), dtype=np.float32)
    predict_series, predict_day = np.empty(series * 7, dtype=np.int64), np.empty(series * 7, dtype=np.int64)
    step = max(1, CHUNK_ROWS // (days - first))
    filled = 0
    for start in range(0, series, step):
        end = min(start + step, series)
        table = long_table(sales[start:end, :origin + 1], started[start:end, :origin + 1], covariates[start:end],
                           ids[start:end], days, first=first, first_series=start)
        features = lag_features(table, shift)
        rows = features.filter(pl.col("day").is_between(low, origin) & pl.col("sales").is_not_null())
        x[filled:filled + len(rows)] = rows.select(pl.col(columns).cast(pl.Float32)).to_numpy()
        y[filled:filled + len(rows)] = rows["sales"].to_numpy()
        filled += len(rows)
        ahead = features.filter(pl.col("day").is_between(*predict))
        part = slice(start * 7, end * 7)
        predict_x[part] = ahead.select(pl.col(columns).cast(pl.Float32)).to_numpy()
        predict_series[part], predict_day[part] = ahead["series"].to_numpy(), ahead["day"].to_numpy()
    if filled != len(x):  # a sales value missing on a day its series was on sale
        raise ValueError(f"tree rows: {filled} rows with sales where the series were on sale on {len(x)}")
    return TreeMatrix(columns, x, y, predict_x, predict_series, predict_day)
