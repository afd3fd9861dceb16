"""Sales forecasts from a verified checkpoint: for a series the model knows (its history is stored with the
checkpoint), or for a posted history of another one; on ONNX Runtime (default) or torch.

The checkpoint holds every series' ids, sales and prices, and the calendar's covariates up to the calendar's end,
so a forecast needs no data folder; a posted history must fall within that calendar (events and SNAP days are known
only there).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.predictor import CheckpointPredictor
from serving.refusal import Refused
from training.checkpoint import verify_file
from training.data.m5_features import ID_FIELDS, IdVocabulary, series_covariates

HISTORY_FILE, SERIES_FILE = "history.safetensors", "series.csv"


@dataclass
class PostedSeries:
    sales: list[float]
    start_date: dt.date
    prices: list[float] | None = None  # the history's days, optionally followed by the forecast days'
    ids: dict[str, str | None] | None = None  # item_id, dept_id, cat_id, store_id, state_id (any may be missing)


class SalesPredictor(CheckpointPredictor):
    task, inputs = "sales", ("past_sales", "past_alive", "past_covariates", "future_covariates", "ids")

    def __init__(self, ckpt: Path | str, runtime: str = "onnx") -> None:
        from safetensors.numpy import load_file

        super().__init__(ckpt, runtime)
        manifest, pre = self.manifest, self.pre
        self.context, self.horizon = int(pre["context"]), int(pre["horizon"])
        self.interval = pre.get("interval")  # quantiles of the validation errors, per day ahead
        self.first_date = dt.date.fromisoformat(pre["first_date"])
        self.first_day, self.calendar_days = int(pre["first_day"]), int(pre["calendar_days"])
        arrays = load_file(str(verify_file(self.ckpt, manifest, HISTORY_FILE)))
        self.sales, self.prices = arrays["sales"], arrays["prices"]
        self.calendar = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("calendar/")}
        self.series = pd.read_csv(verify_file(self.ckpt, manifest, SERIES_FILE), dtype=str)
        self.vocab = IdVocabulary(pre["id_vocabulary"])
        self.codes = self.vocab.encode(self.series)
        self.index = {sid: i for i, sid in enumerate(self.series["id"])}
        # also by "ITEM_STORE", the id without the file's _validation/_evaluation suffix
        self.index.update({f"{r.item_id}_{r.store_id}": i for i, r in enumerate(self.series.itertuples())})

    @property
    def last_date(self) -> dt.date:
        return self.first_date + dt.timedelta(days=self.first_day - 1 + self.sales.shape[1] - 1)

    def recent(self, series_id: str, days: int) -> tuple[list[str], list[float]]:
        """The last `days` dates and sales of a known series (what a chart shows before the forecast)."""
        i = self.index[series_id]
        sales = self.sales[i, -days:]
        first = self.last_date - dt.timedelta(days=len(sales) - 1)
        return [(first + dt.timedelta(days=k)).isoformat() for k in range(len(sales))], sales.tolist()

    def forecast_known(self, series_id: str, horizon: int) -> dict[str, Any]:
        if series_id not in self.index:
            example = self.series["id"].iloc[0]
            raise Refused(f"unknown series_id {series_id!r}: not one of the {len(self.series):,} series this model "
                          f"knows (e.g. {example!r})", ["series_id"])
        i = self.index[series_id]
        sales, prices = self.sales[i], self.prices[i]
        start = self.first_day - 1  # calendar index of the first sales day
        result = self._forecast(sales, prices, start, self.codes[i:i + 1], self.series["state_id"].iloc[i], horizon)
        return {"series_id": self.series["id"].iloc[i], **result}

    def forecast_posted(self, posted: PostedSeries, horizon: int) -> dict[str, Any]:
        sales = np.asarray(posted.sales, dtype=np.float32)
        start = (posted.start_date - self.first_date).days  # calendar index of the history's first day
        if start < 0:
            raise Refused(f"{posted.start_date} is before the calendar's first day {self.first_date}",
                          ["history", "start_date"])
        end = start + len(sales) + horizon
        if end > self.calendar_days:
            last = self.first_date + dt.timedelta(days=self.calendar_days - 1)
            until = self.first_date + dt.timedelta(days=end - 1)
            raise Refused(f"the forecast would run to {until}, past the calendar's last day {last}: events and SNAP "
                          "days are known only within it", ["history", "start_date"])
        if not (sales > 0).any():
            raise Refused("the history has no sales at all: nothing to forecast from", ["history", "sales"])
        prices = self._posted_prices(posted.prices, len(sales), start)
        ids = pd.DataFrame([{field: (posted.ids or {}).get(field) for field in ID_FIELDS}])
        result = self._forecast(sales, prices, start, self.vocab.encode(ids), ids["state_id"].iloc[0], horizon)
        return {"series_id": None, **result}

    def _posted_prices(self, prices: list[float] | None, days: int, start: int) -> np.ndarray:
        """Daily prices from the history's first day to the calendar's end: the posted ones, carried forward;
        a constant price when none are posted (the model then reads no price changes)."""
        out = np.full(self.calendar_days - start, np.nan, dtype=np.float32)
        if prices is None:
            out[:] = 1.0
            return out
        if len(prices) not in (days, days + self.horizon):
            raise Refused(f"{len(prices)} prices for {days} days of sales: give one per day of the history "
                          f"(optionally {self.horizon} more for the days ahead)", ["history", "prices"])
        out[:len(prices)] = prices
        return pd.Series(out).ffill().to_numpy(dtype=np.float32)

    def _forecast(self, sales: np.ndarray, prices: np.ndarray, start: int, codes: np.ndarray,
                  state: str | None, horizon: int) -> dict[str, Any]:
        """Forecast the `horizon` days after `sales`, whose first day is calendar index `start`."""
        days = len(sales)
        calendar = {k: v[start:start + len(prices)] for k, v in self.calendar.items()}
        covariates = series_covariates(calendar, prices[None, :], [state or ""])[0]
        alive = (np.cumsum(sales > 0) > 0).astype(np.float32)
        past = np.zeros(self.context, dtype=np.float32)
        past_alive = np.zeros(self.context, dtype=np.float32)
        past_cov = np.zeros((self.context, covariates.shape[1]), dtype=np.float32)
        take = min(days, self.context)
        past[-take:], past_alive[-take:] = sales[-take:], alive[-take:]
        past_cov[-take:] = covariates[days - take:days]
        future = np.zeros((self.horizon, covariates.shape[1]), dtype=np.float32)
        ahead = covariates[days:days + self.horizon]
        future[:len(ahead)] = ahead
        output = self.runner(past_sales=past[None], past_alive=past_alive[None], past_covariates=past_cov[None],
                             future_covariates=future[None], ids=codes.astype(np.int64))[0]
        first = self.first_date + dt.timedelta(days=start + days)
        point = np.maximum(output[:horizon], 0.0)
        return {"dates": [(first + dt.timedelta(days=k)).isoformat() for k in range(horizon)],
                "forecast": [round(float(v), 4) for v in point],
                "quantiles": self._quantiles(point, past, past_alive),
                "history_days": int(days), "read_days": int(take)}

    def _quantiles(self, point: np.ndarray, past: np.ndarray, alive: np.ndarray) -> dict[str, list[float]] | None:
        """The interval bounds around `point`: the validation error quantiles times the window's level (as the
        network measures it: the mean over on-sale days, at least one unit a day)."""
        if not self.interval:
            return None
        level = max(1.0, float((past * alive).sum() / max(alive.sum(), 1.0)))
        quantiles = np.asarray(self.interval["scaled_error_quantiles"])[:len(point)]
        return {str(q): [round(float(v), 4) for v in np.maximum(point + quantiles[:, i] * level, 0.0)]
                for i, q in enumerate(self.interval["levels"])}
