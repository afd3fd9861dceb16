"""Sales forecasts from a verified checkpoint: for a series the model knows (its history is stored with the
checkpoint), or for a posted history of another one; on ONNX Runtime (default) or torch.

For the known series the answer comes from the evaluation report's best row on the validation days (the network, a
baseline or an ensemble: the evaluation stored every row's forecast of the days after the data) or the row asked
for; a posted history is forecast by the network, the one model that needs no fitting per series. Each model's
intervals come from its own conformal calibration (training.metrics.intervals).

The checkpoint holds every series' ids, sales and prices, and the calendar's covariates up to the calendar's end,
so a forecast needs no data folder; a posted history must fall within that calendar (events and SNAP days are known
only there).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.predictor import CheckpointPredictor
from serving.refusal import Refused
from training.checkpoint import verify_file
from training.data.m5_features import ID_FIELDS, IdVocabulary, series_covariates
from training.metrics import intervals
from training.tasks.specs.sales import FORECASTS_FILE, HISTORY_FILE, SERIES_FILE, SERVED_FILE

DEFAULT_LEVELS = (80,)  # interval levels (%) when a caller names none


@dataclass
class PostedSeries:
    sales: list[float]
    start_date: dt.date
    prices: list[float] | None = None  # the history's days, optionally followed by the forecast days'
    ids: dict[str, str | None] | None = None  # item_id, dept_id, cat_id, store_id, state_id (any may be missing)
    series_id: str | None = None  # the caller's name for it, answered back


Locator = Callable[[str], list]  # a posted series' field -> where it is in the request
LONG_FIELDS = {"start_date": "ds", "sales": "y"}  # a history's fields as the long shape names them


def long_histories(unique_ids: Sequence[str], days: Sequence[dt.date], values: Sequence[float],
                   min_days: int) -> tuple[list[PostedSeries], list[Locator]]:
    """Histories from rows in the long shape Nixtla's libraries use (unique_id, ds, y), grouped by unique_id in
    order of first appearance, each a run of consecutive days in any row order; and where each series is in the
    request. A series with a day given twice, a missing day or fewer than `min_days` days is refused."""
    rows: dict[str, list[int]] = {}
    for i, uid in enumerate(unique_ids):
        rows.setdefault(uid, []).append(i)
    posted, where = [], []
    for uid, indices in rows.items():
        indices.sort(key=lambda i: days[i])
        dates = [days[i] for i in indices]
        first = indices[0]
        for before, after, i in zip(dates, dates[1:], indices[1:], strict=False):
            if after == before:
                raise Refused(f"series {uid!r}: {after} is given twice", ["histories", i, "ds"])
            if after != before + dt.timedelta(days=1):
                raise Refused(f"series {uid!r}: no values from {before + dt.timedelta(days=1)} to "
                              f"{after - dt.timedelta(days=1)}; give every day (0 for a day without sales)",
                              ["histories", i, "ds"])
        if len(dates) < min_days:
            raise Refused(f"series {uid!r}: {len(dates)} days; at least {min_days} are needed",
                          ["histories", first, "unique_id"])
        posted.append(PostedSeries([values[i] for i in indices], dates[0], series_id=uid))
        where.append(lambda field, first=first: ["histories", first, LONG_FIELDS.get(field, field)])
    return posted, where


@dataclass
class SeriesInputs:
    past: np.ndarray  # (context,) sales, zeros before the history
    past_alive: np.ndarray
    past_covariates: np.ndarray  # (context, covariates)
    future_covariates: np.ndarray  # (horizon, covariates)
    ids: np.ndarray  # (5,) hierarchy id codes
    first_date: dt.date  # of the days forecast
    days: int  # of history given
    read_days: int  # of those read


class SalesPredictor(CheckpointPredictor):
    task, inputs = "sales", ("past_sales", "past_alive", "past_covariates", "future_covariates", "ids")

    def __init__(self, ckpt: Path | str, runtime: str = "onnx", model: str = "best") -> None:
        from safetensors.numpy import load_file

        super().__init__(ckpt, runtime)
        manifest, pre = self.manifest, self.pre
        self.context, self.horizon = int(pre["context"]), int(pre["horizon"])
        # the conformal calibration (training.metrics.intervals); absent from checkpoints made before it
        self.interval = pre.get("interval") if "grid" in pre.get("interval", {}) else None
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
        self.network = str(manifest.training["task_options"]["model"])
        self.stored: dict[str, np.ndarray] = {}  # the evaluation's forecasts of the days after the data, per row
        self.served = self._served_models()
        self.model = self._choose(model)

    def _served_models(self) -> dict[str, Any]:
        """The evaluation's rows the API can serve for known series (training.tasks.sales.write_served_models);
        only the network before the checkpoint is evaluated."""
        from safetensors.numpy import load_file

        if SERVED_FILE not in self.manifest.files:
            return {"best": self.network, "network": self.network, "models": {self.network: {"kind": "network"}}}
        served = json.loads(verify_file(self.ckpt, self.manifest, SERVED_FILE).read_text())
        self.stored = load_file(str(verify_file(self.ckpt, self.manifest, FORECASTS_FILE)))
        return served

    def _choose(self, model: str) -> str:
        chosen = self.served["best"] if model == "best" else model
        if chosen not in self.served["models"]:
            raise ValueError(f"--model {model}: not one of the evaluation's rows ({', '.join(self.served['models'])}"
                             f" or best){'' if SERVED_FILE in self.manifest.files else '; run modelyard evaluate'}")
        return chosen

    @property
    def last_date(self) -> dt.date:
        return self.first_date + dt.timedelta(days=self.first_day - 1 + self.sales.shape[1] - 1)

    def recent(self, series_id: str, days: int) -> tuple[list[str], list[float]]:
        """The last `days` dates and sales of a known series (what a chart shows before the forecast)."""
        i = self.index[series_id]
        sales = self.sales[i, -days:]
        first = self.last_date - dt.timedelta(days=len(sales) - 1)
        return [(first + dt.timedelta(days=k)).isoformat() for k in range(len(sales))], sales.tolist()

    def forecast_known(self, series_id: str, horizon: int, levels: Sequence[float] = DEFAULT_LEVELS
                       ) -> dict[str, Any]:
        return self.forecast_many([series_id], horizon, levels, field="series_id")[0]

    def forecast_many(self, series_ids: Sequence[str], horizon: int, levels: Sequence[float] = DEFAULT_LEVELS,
                      field: str = "series_ids") -> list[dict[str, Any]]:
        """Known series by id, in one model call (`field`: where the ids are in the request, for a refusal)."""
        unknown = [sid for sid in series_ids if sid not in self.index]
        if unknown:
            example = self.series["id"].iloc[0]
            shown = ", ".join(repr(sid) for sid in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3
                                                                    else "")
            raise Refused(f"unknown series_id {shown}: not among the {len(self.series):,} series this model knows "
                          f"(e.g. {example!r})", [field])
        rows = [self.index[sid] for sid in series_ids]
        start = self.first_day - 1  # calendar index of the first sales day
        # the chosen row's forecast of the days after the data, made by the evaluation, or the network's now
        point = self.stored[self.model][rows] if self.model != self.network else None
        inputs = [self._inputs(self.sales[i], self.prices[i], start, self.codes[i:i + 1],
                               self.series["state_id"].iloc[i], with_covariates=point is None) for i in rows]
        answers = self._forecast(inputs, horizon, levels, self.model, point)
        return [{"series_id": self.series["id"].iloc[i], **answer} for i, answer in zip(rows, answers, strict=True)]

    def forecast_posted(self, posted: PostedSeries, horizon: int, levels: Sequence[float] = DEFAULT_LEVELS
                        ) -> dict[str, Any]:
        return self.forecast_posted_many([posted], horizon, levels, [lambda field: ["history", field]])[0]

    def forecast_posted_many(self, posted: Sequence[PostedSeries], horizon: int,
                             levels: Sequence[float] = DEFAULT_LEVELS, where: Sequence[Locator] | None = None
                             ) -> list[dict[str, Any]]:
        """Posted histories, by the network in one call; `where[i]` locates series i's fields in the request (for
        a refusal)."""
        where = where or [lambda field, i=i: ["histories", i, field] for i in range(len(posted))]
        inputs = [self._posted_inputs(series, horizon, loc) for series, loc in zip(posted, where, strict=True)]
        answers = self._forecast(inputs, horizon, levels, self.network)
        return [{"series_id": series.series_id, **answer} for series, answer in zip(posted, answers, strict=True)]

    def _posted_inputs(self, posted: PostedSeries, horizon: int, loc: Locator) -> SeriesInputs:
        sales = np.asarray(posted.sales, dtype=np.float32)
        start = (posted.start_date - self.first_date).days  # calendar index of the history's first day
        name = f"series {posted.series_id!r}: " if posted.series_id is not None else ""
        if start < 0:
            raise Refused(f"{name}{posted.start_date} is before the calendar's first day {self.first_date}",
                          loc("start_date"))
        end = start + len(sales) + horizon
        if end > self.calendar_days:
            last = self.first_date + dt.timedelta(days=self.calendar_days - 1)
            until = self.first_date + dt.timedelta(days=end - 1)
            raise Refused(f"{name}the forecast would run to {until}, past the calendar's last day {last}: events and "
                          "SNAP days are known only within it", loc("start_date"))
        if not (sales > 0).any():
            raise Refused(f"{name}the history has no sales at all: nothing to forecast from", loc("sales"))
        prices = self._posted_prices(posted.prices, len(sales), start, loc)
        ids = pd.DataFrame([{field: (posted.ids or {}).get(field) for field in ID_FIELDS}])
        return self._inputs(sales, prices, start, self.vocab.encode(ids), ids["state_id"].iloc[0])

    def _posted_prices(self, prices: list[float] | None, days: int, start: int, loc: Locator) -> np.ndarray:
        """Daily prices from the history's first day to the calendar's end: the posted ones, carried forward;
        a constant price when none are posted (the model then reads no price changes)."""
        out = np.full(self.calendar_days - start, np.nan, dtype=np.float32)
        if prices is None:
            out[:] = 1.0
            return out
        if len(prices) not in (days, days + self.horizon):
            raise Refused(f"{len(prices)} prices for {days} days of sales: give one per day of the history "
                          f"(optionally {self.horizon} more for the days ahead)", loc("prices"))
        out[:len(prices)] = prices
        return pd.Series(out).ffill().to_numpy(dtype=np.float32)

    def _inputs(self, sales: np.ndarray, prices: np.ndarray, start: int, codes: np.ndarray, state: str | None,
                with_covariates: bool = True) -> SeriesInputs:
        """The model's inputs for forecasting the days after `sales`, whose first day is calendar index `start`;
        without covariates (no columns) where a stored forecast needs only the window's sales, for its interval."""
        days = len(sales)
        if with_covariates:
            calendar = {k: v[start:start + len(prices)] for k, v in self.calendar.items()}
            covariates = series_covariates(calendar, prices[None, :], [state or ""])[0]
        else:
            covariates = np.zeros((days + self.horizon, 0), dtype=np.float32)
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
        return SeriesInputs(past, past_alive, past_cov, future, codes[0].astype(np.int64),
                            self.first_date + dt.timedelta(days=start + days), days, take)

    def _forecast(self, inputs: list[SeriesInputs], horizon: int, levels: Sequence[float], model: str,
                  point: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Per series in `inputs` its dates, forecast and interval bounds from `model`: the network's, in one call,
        unless its `point` forecasts (series, 28) are given."""
        if point is None:
            point = self.runner(past_sales=np.stack([x.past for x in inputs]),
                                past_alive=np.stack([x.past_alive for x in inputs]),
                                past_covariates=np.stack([x.past_covariates for x in inputs]),
                                future_covariates=np.stack([x.future_covariates for x in inputs]),
                                ids=np.stack([x.ids for x in inputs]))
        point = np.maximum(point[:, :horizon], 0.0)
        calibration = self.interval if model == self.network else self.served["models"][model]["calibration"]
        bounds = {}
        if calibration and levels:
            scale = np.array([window_level(x.past, x.past_alive) for x in inputs])
            bounds = intervals.bounds(point, scale, calibration, levels)
        return [{"model": model, "dates": [(x.first_date + dt.timedelta(days=k)).isoformat() for k in range(horizon)],
                 "forecast": [round(float(v), 4) for v in point[i]],
                 "quantiles": {q: [round(float(v), 4) for v in b[i]] for q, b in bounds.items()} or None,
                 "history_days": int(x.days), "read_days": int(x.read_days)} for i, x in enumerate(inputs)]


def window_level(past: np.ndarray, alive: np.ndarray) -> float:
    """The series' level in the window the network reads, as it measures it (training.models.sales.window_scale):
    the mean over on-sale days, at least one unit a day."""
    return max(1.0, float((past * alive).sum() / max(alive.sum(), 1.0)))
