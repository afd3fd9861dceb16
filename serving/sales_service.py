"""The sales forecast API as a BentoML service: POST /forecast -> daily unit-sales forecasts for up to 28 days.

Name a series the model knows (`{"series_id": "FOODS_3_090_CA_3_validation", "horizon": 28}`; the id without its
`_validation` suffix works too), or post the history of another one (`{"history": {"sales": [...], "start_date":
"2016-01-01"}, "horizon": 14}`, optionally with daily `prices` and its hierarchy ids); `level: [80, 95]` asks for
those intervals. POST /forecast_many forecasts up to --max-series known series (`series_ids`), or posted ones in the
long shape Nixtla's libraries use (`histories`: rows of unique_id, ds, y), in one model call.
Every refusal, bad fields and
requests the model cannot answer alike (an unknown id, dates past the calendar), is HTTP 400 with the reason in
`detail`. Settings come from MODELYARD_CHECKPOINT / MODELYARD_RUNTIME and OPTIONS, which `modelyard serve` sets.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import bentoml
from pydantic import BaseModel, Field

from serving.openapi import document_truthfully
from serving.refusal import Refused
from serving.settings import read_settings
from training.options import Option

SERVICE, ROUTE = "SalesForecaster", "/forecast"
OPTIONS = (Option("max_history_days", int, 4000, "most days of posted history in one request", minimum=28),
           Option("max_series", int, 1000, "most series in one /forecast_many request", minimum=1),
           Option("max_history_rows", int, 200_000, "most rows of posted histories in one /forecast_many request",
                  minimum=28),
           Option("model", str, "best", "which of the evaluation report's rows answers for the known series: best "
                                        "(the lowest validation WRMSSE scored out of sample), or a row's name"))
SETTINGS = read_settings(OPTIONS)
MAX_DAYS, MAX_SERIES, MAX_ROWS = SETTINGS["max_history_days"], SETTINGS["max_series"], SETTINGS["max_history_rows"]

Units = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]
Price = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]
Id = Annotated[str, Field(min_length=1, max_length=64)]
Horizon = Annotated[int, Field(ge=1, le=28, strict=True)]
Levels = Annotated[list[Annotated[int, Field(ge=1, le=99, strict=True)]], Field(
    max_length=10, description="prediction interval levels in percent (80: the 10% and 90% quantiles)")]


class History(BaseModel):
    sales: list[Units] = Field(min_length=28, max_length=MAX_DAYS, description="daily unit sales, oldest first; "
                               "zeros before the first sale count as not yet on sale")
    start_date: dt.date = Field(description="the date of the first value in `sales`")
    prices: list[Price] | None = Field(None, description="sell price per day of the history, optionally followed "
                                                         "by the days ahead (else the last price is kept)")
    item_id: Id | None = None
    dept_id: Id | None = None
    cat_id: Id | None = None
    store_id: Id | None = None
    state_id: Id | None = Field(None, description="CA, TX or WI: which SNAP days apply")


class Observation(BaseModel):
    unique_id: Id = Field(description="the series this row belongs to (answered back as series_id)")
    ds: dt.date = Field(description="the day")
    y: Units = Field(description="unit sales that day")


class Forecast(BaseModel):
    series_id: str | None = Field(description="the known series forecast, the unique_id of a posted one in the long "
                                              "shape, or null for a posted `history`")
    model: str = Field(description="the model or ensemble that answered (a posted history: always the network)")
    dates: list[str] = Field(description="ISO dates of the days forecast")
    forecast: list[float] = Field(description="unit sales forecast per day")
    quantiles: dict[str, list[float]] | None = Field(description="prediction interval bounds per day by quantile: "
                                                                 "level L gives (100 - L)/200 and (100 + L)/200 "
                                                                 "(\"0.1\", \"0.9\": the 80% interval), calibrated "
                                                                 "on rolling validation forecasts; null for a "
                                                                 "checkpoint without a calibration or no levels")
    history_days: int = Field(description="days of history available")
    read_days: int = Field(description="of those, the days the model read")


class Forecasts(BaseModel):
    forecasts: list[Forecast] = Field(description="one per series asked, in the order asked")


@document_truthfully
@bentoml.service(name="sales_forecaster", workers=1, traffic={"timeout": 30})
class SalesForecaster:
    def __init__(self) -> None:
        from serving.sales_predictor import SalesPredictor

        self.predictor = SalesPredictor.from_env(model=SETTINGS["model"])

    @bentoml.api(route="/forecast")
    def forecast(self, series_id: Id | None = None, history: History | None = None, horizon: Horizon = 28,
                 level: Levels = [80]) -> Forecast:  # noqa: B006 (pydantic copies defaults)
        """Forecast a known series (`series_id`) or a posted `history` (give exactly one) `horizon` days ahead,
        with an interval at each `level`."""
        from serving.sales_predictor import PostedSeries

        if (series_id is None) == (history is None):
            raise Refused("give exactly one of series_id (a series the model knows) or history",
                          ["series_id"]).as_validation_error()
        try:
            if series_id is not None:
                return Forecast(**self.predictor.forecast_known(series_id, horizon, level))
            ids = history.model_dump(include={"item_id", "dept_id", "cat_id", "store_id", "state_id"})
            posted = PostedSeries(history.sales, history.start_date, history.prices, ids)
            return Forecast(**self.predictor.forecast_posted(posted, horizon, level))
        except Refused as exc:
            raise exc.as_validation_error() from None

    @bentoml.api(route="/forecast_many")
    def forecast_many(self, series_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_SERIES)] | None = None,
                      histories: Annotated[list[Observation], Field(min_length=28, max_length=MAX_ROWS)] | None = None,
                      horizon: Horizon = 28, level: Levels = [80]) -> Forecasts:  # noqa: B006
        """Forecast many known series (`series_ids`, in the order asked) or posted ones (`histories`: rows of
        unique_id, ds, y; answered in order of first appearance) in one model call; give exactly one."""
        from serving.sales_predictor import long_histories

        if (series_ids is None) == (histories is None):
            raise Refused("give exactly one of series_ids (series the model knows) or histories",
                          ["series_ids"]).as_validation_error()
        try:
            if series_ids is not None:
                return Forecasts(forecasts=self.predictor.forecast_many(series_ids, horizon, level))
            posted, where = long_histories([r.unique_id for r in histories], [r.ds for r in histories],
                                           [r.y for r in histories], min_days=28)
            if len(posted) > MAX_SERIES:
                raise Refused(f"{len(posted):,} series; at most {MAX_SERIES:,} in one request", ["histories"])
            return Forecasts(forecasts=self.predictor.forecast_posted_many(posted, horizon, level, where))
        except Refused as exc:
            raise exc.as_validation_error() from None
