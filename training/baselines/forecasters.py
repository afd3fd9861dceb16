"""The sales report's baselines, each through the library made for it: seasonal naive, ETS and ARIMA
(statsforecast), LightGBM and XGBoost on lag and rolling features (the family the M5 winners used), and Prophet.

Every baseline forecasts three times: the validation days from the history before them (these forecasts fit the
ensembles' weights), the test days from the history before those, as the network does, and the 28 days after the
data (what the API serves when a baseline or an ensemble ranks best).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from training.data.m5_features import HORIZON, ID_FIELDS, tree_matrix

STATISTICAL = {"seasonal_naive": "SeasonalNaive", "ets": "AutoETS", "arima": "AutoARIMA"}
TREES = ("lightgbm", "xgboost")
BASELINES = (*STATISTICAL, *TREES, "prophet")
STAT_HISTORY = 730  # days the statistical models and Prophet fit on: two years show the yearly pattern twice
TREE_HISTORY = 1095  # days of rows the trees train on
BUCKETS = (7, 14, 21, 28)  # one tree model per week ahead, each using only lags at least that old


def selected(spec: str) -> list[str]:
    if spec in ("all", ""):
        return list(BASELINES)
    if spec == "none":
        return []
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise ValueError(f"--baselines: unknown {', '.join(unknown)}; choose from {', '.join(BASELINES)}, all, none")
    return names


def run_baselines(names: list[str], data) -> dict[str, tuple[dict[str, np.ndarray], float]]:
    """{name: ({"val": (series, 28), "test": (series, 28), "future": (series, 28)}, seconds spent fitting and
    forecasting)}: "future" forecasts the 28 days after the data, which the API serves for the known series."""
    origins = {"val": data.val_start - 1, "test": data.test_start - 1, "future": data.m5.days - 1}
    results = {}
    for name in tqdm(names, desc="baselines", unit="model", disable=not names):
        fit = _FORECASTERS[name] if name in _FORECASTERS else _statistical(name)
        start = time.perf_counter()
        results[name] = ({split: np.maximum(fit(data, origin), 0.0) for split, origin in origins.items()},
                         time.perf_counter() - start)
    return results


# --- statistical models (statsforecast) and Prophet: one model per series, on its life since the first sale -------

def _histories(data, origin: int, days: int) -> list[tuple[int, np.ndarray, int]]:
    """(series index, sales up to and including `origin` since its first sale (at most `days`), first day index)."""
    out = []
    for i in range(len(data.alive)):
        alive = np.flatnonzero(data.alive[i, :origin + 1])
        if alive.size:
            first = max(int(alive[0]), origin + 1 - days)
            out.append((i, data.m5.sales[i, first:origin + 1], first))
    return out


def _dates(data, first: int, count: int):
    import pandas as pd

    offset = data.m5.first_day - 1 + first
    return pd.DatetimeIndex(data.m5.calendar["date"].iloc[offset:offset + count])


def _statistical(name: str) -> Callable:
    def fit(data, origin: int) -> np.ndarray:
        import pandas as pd
        from statsforecast import StatsForecast
        from statsforecast import models as sf_models

        cls = getattr(sf_models, STATISTICAL[name])
        model = cls(season_length=7)
        frames = [pd.DataFrame({"unique_id": i, "ds": _dates(data, first, len(history)), "y": history})
                  for i, history, first in _histories(data, origin, STAT_HISTORY)]
        out = np.zeros((len(data.alive), HORIZON))
        if frames:
            # one process per core: AutoARIMA on the 10 real series took 112 s for the report's two origins alone,
            # 67 s on both cores, the same forecasts
            jobs = min(os.cpu_count() or 1, len(frames))
            result = StatsForecast(models=[model], freq="D", n_jobs=jobs).forecast(df=pd.concat(frames), h=HORIZON)
            column = next(c for c in result.columns if c not in ("unique_id", "ds"))
            for i, rows in result.groupby("unique_id"):
                out[int(i)] = rows[column].to_numpy()
        return out
    return fit


def prophet(data, origin: int) -> np.ndarray:
    import pandas as pd

    # Stan logs two lines per fit, and prophet one at import about plotly (which its plots, unused here, need).
    for name in ("cmdstanpy", "prophet.plot"):
        logging.getLogger(name).disabled = True
    from prophet import Prophet
    calendar = data.m5.calendar
    events = calendar[calendar["event_name_1"].notna()]
    holidays = pd.DataFrame({"holiday": events["event_name_1"], "ds": events["date"]})
    out = np.zeros((len(data.alive), HORIZON))
    for i, history, first in _histories(data, origin, STAT_HISTORY):
        model = Prophet(weekly_seasonality=True, yearly_seasonality=True, daily_seasonality=False,
                        holidays=holidays, uncertainty_samples=0)
        model.fit(pd.DataFrame({"ds": _dates(data, first, len(history)), "y": history}))
        future = pd.DataFrame({"ds": _dates(data, origin + 1, HORIZON)})
        out[i] = model.predict(future)["yhat"].to_numpy()
    return out


# --- gradient-boosted trees on the feature table --------------------------------------------------------------------

def _tree_forecast(data, origin: int, train: Callable) -> np.ndarray:
    """One model per week ahead (lags of at least 7, 14, 21, 28 days), so no forecast is fed back in."""
    out = np.zeros((len(data.alive), HORIZON))
    for shift in BUCKETS:
        rows = tree_matrix(data.m5.sales, data.alive > 0, data.covariates, data.codes, origin, shift, TREE_HISTORY)
        predict = train(rows.x, rows.y, rows.columns)
        out[rows.predict_series, rows.predict_day - origin - 1] = predict(rows.predict_x)
        del rows  # before the next bucket's matrices are allocated
    return out


def _train_lightgbm(x: np.ndarray, y: np.ndarray, columns: list[str]) -> Callable:
    import lightgbm as lgb

    model = lgb.LGBMRegressor(objective="tweedie", tweedie_variance_power=1.1, learning_rate=0.05, n_estimators=300,
                              num_leaves=31, min_child_samples=50, subsample=0.8, subsample_freq=1,
                              colsample_bytree=0.8, n_jobs=os.cpu_count(), verbose=-1)
    model.fit(x, y, feature_name=columns, categorical_feature=ID_FIELDS)
    return model.predict


def _train_xgboost(x: np.ndarray, y: np.ndarray, columns: list[str]) -> Callable:
    import xgboost as xgb

    model = xgb.XGBRegressor(objective="reg:tweedie", tweedie_variance_power=1.1, learning_rate=0.05,
                             n_estimators=300, max_depth=6, subsample=0.8, colsample_bytree=0.8, tree_method="hist",
                             n_jobs=os.cpu_count())
    model.fit(x, y)
    return model.predict


def lightgbm(data, origin: int) -> np.ndarray:
    return _tree_forecast(data, origin, _train_lightgbm)


def xgboost(data, origin: int) -> np.ndarray:
    return _tree_forecast(data, origin, _train_xgboost)


_FORECASTERS: dict[str, Callable] = {"lightgbm": lightgbm, "xgboost": xgboost, "prophet": prophet}
