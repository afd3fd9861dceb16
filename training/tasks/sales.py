"""Sales recipe (M5): forecast 28 days of unit sales for every series with one global LSTM or GRU.

Reads top to bottom: data (the M5 files; the last 28 days held out for the test, the 28 before them validate) ->
features (day covariates, hierarchy ids) -> model -> loss (MSE in units of each window's own sales level) ->
validation (WRMSSE of the 28 validation days, for early stopping) -> train (engine) -> checkpoint (with the history
the API forecasts from) -> evaluation report (WRMSSE, RMSE, MAE against statistical, tree and Prophet baselines and
their ensembles, with plots).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from training.checkpoint import (
    CheckpointManifest,
    record_files,
    save_arrays,
    save_checkpoint,
    write_json_atomic,
    write_report,
)
from training.config import TrainConfig
from training.data.m5 import M5Data, load_m5
from training.data.m5_features import COVARIATES, HORIZON, IdVocabulary, day_covariates
from training.engine.trainer import FitResult, TrainingJob
from training.metrics import intervals
from training.metrics.wrmsse import WRMSSE
from training.models import build_model, load_model
from training.models.sales import window_scale
from training.tasks.specs.sales import FORECASTS_FILE, HISTORY_FILE, SERIES_FILE, SERVED_FILE, SPEC

DEFAULTS = {"batch_size": 128, "epochs": 20, "lr": 2e-3, "weight_decay": 1e-4, "warmup_steps": 20}


# --- data ---------------------------------------------------------------------------------------------------------

@dataclass
class SalesData:
    m5: M5Data
    covariates: np.ndarray  # (series, calendar days from first_day, len(COVARIATES))
    alive: np.ndarray  # (series, days) 1.0 from the series' first sale on
    codes: np.ndarray  # (series, 5) hierarchy id indices
    vocab: IdVocabulary
    windows: int = 0  # training examples per epoch (set when the job is built)

    @property
    def test_start(self) -> int:  # index of the first held-out test day
        return self.m5.days - HORIZON

    @property
    def val_start(self) -> int:
        return self.m5.days - 2 * HORIZON


def load_data(data_dir: Path, series: int | None = None, last_day: int | None = None) -> SalesData:
    """The first `series` series, with their sales up to day d_`last_day` (prices and the calendar run on: they are
    known ahead)."""
    m5 = load_m5(Path(data_dir))
    rows = slice(series)
    days = m5.days if last_day is None else last_day - m5.first_day + 1
    if last_day is not None and not 0 < days <= m5.days:
        raise ValueError(f"--last-day {last_day}: the sales run from d_{m5.first_day} to "
                         f"d_{m5.first_day + m5.days - 1}")
    if series is not None or days < m5.days:
        m5 = M5Data(m5.ids.iloc[rows].reset_index(drop=True), m5.sales[rows, :days], m5.first_day, m5.calendar,
                    m5.prices[rows], m5.source, m5.fingerprint)
    if m5.days < 2 * HORIZON + 56:
        raise ValueError(f"{m5.source['sales']}: {m5.days} days of sales; at least {2 * HORIZON + 56} are needed "
                         f"(28 to test, 28 to validate, history before them)")
    vocab = IdVocabulary.fit(m5.ids)
    covariates = day_covariates(m5.calendar, m5.prices, m5.ids["state_id"].tolist(), m5.first_day)
    return SalesData(m5, covariates, m5.started().astype(np.float32), vocab.encode(m5.ids), vocab)


class SalesWindows(Dataset):
    """Training examples: (series, origin) pairs; each is `context` days up to the origin and the 28 after it.
    Batches are cut with array indexing in one go (`__getitems__`), not one example at a time."""

    def __init__(self, data: SalesData, origins: np.ndarray, context: int) -> None:
        self.sales = torch.from_numpy(data.m5.sales)
        self.alive = torch.from_numpy(data.alive)
        self.covariates = torch.from_numpy(data.covariates)
        self.codes = torch.from_numpy(data.codes)
        self.origins = torch.from_numpy(origins)  # (n, 2): series index, origin day index
        self.context = context

    def __len__(self) -> int:
        return len(self.origins)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        pairs = self.origins[torch.as_tensor(indices)]
        return window_batch(self.sales, self.alive, self.covariates, self.codes, pairs[:, 0], pairs[:, 1],
                            self.context, with_target=True)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[0] for t in self.__getitems__([index]))


def window_batch(sales: torch.Tensor, alive: torch.Tensor, covariates: torch.Tensor, codes: torch.Tensor,
                 series: torch.Tensor, origin: torch.Tensor, context: int,
                 with_target: bool = False) -> tuple[torch.Tensor, ...]:
    """The network's inputs for forecasting from `origin` (the last known day) for each `series`."""
    past = origin.unsqueeze(1) + torch.arange(-context + 1, 1).unsqueeze(0)
    future = origin.unsqueeze(1) + torch.arange(1, HORIZON + 1).unsqueeze(0)
    rows = series.unsqueeze(1)
    batch = (sales[rows, past], alive[rows, past], covariates[rows, past], covariates[rows, future], codes[series])
    return (*batch, sales[rows, future]) if with_target else batch


def keep_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return batch  # __getitems__ already stacked it


def training_origins(data: SalesData, context: int, stride: int) -> np.ndarray:
    """Origins whose 28 target days end before the validation window, from 28 days after each series' first sale
    on (windows of a product not yet launched teach nothing), every `stride` days."""
    last = data.val_start - 1 - HORIZON
    first_sale = np.argmax(data.alive > 0, axis=1)
    days = np.arange(last, context - 2, -stride)[::-1]
    series, day = np.meshgrid(np.arange(len(data.alive)), days, indexing="ij")
    keep = (day >= first_sale[:, None] + HORIZON - 1) & (data.alive.any(axis=1)[:, None])
    return np.stack([series[keep], day[keep]], axis=1).astype(np.int64)


# --- model --------------------------------------------------------------------------------------------------------

def model_config(opts: dict[str, Any], vocab: IdVocabulary) -> dict[str, Any]:
    return {"arch": f"sales_{opts['model']}", "n_covariates": len(COVARIATES), "id_sizes": vocab.sizes(),
            "context": opts["context"], "horizon": HORIZON, "hidden": opts["hidden"], "layers": opts["layers"],
            "dropout": 0.1}


# --- loss and validation ------------------------------------------------------------------------------------------

def scaled_mse(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """MSE in units of each window's own sales level, so that a busy series does not drown a quiet one (RMSSE,
    the metric, scales the same way)."""
    *inputs, target = batch
    scale = window_scale(inputs[0], inputs[1])  # recomputed here: the wrapped model's forward must do the work
    return nn.functional.mse_loss(model(*inputs).float() / scale, target / scale)


def forecast(model: nn.Module, data: SalesData, origin: int, context: int, chunk: int = 4096) -> np.ndarray:
    """(series, 28) forecasts from `origin` (the last known day index) for every series; caller sets no_grad."""
    tensors = (torch.from_numpy(data.m5.sales), torch.from_numpy(data.alive), torch.from_numpy(data.covariates),
               torch.from_numpy(data.codes))
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(data.alive), chunk):
        series = torch.arange(start, min(start + chunk, len(data.alive)))
        inputs = window_batch(*tensors, series, torch.full_like(series, origin), context)
        out.append(model(*(t.to(device) for t in inputs)).float().cpu().numpy())
    return np.concatenate(out)


def wrmsse_for(data: SalesData, start: int) -> WRMSSE:
    """The metric for the 28 days from `start`: scales and dollar weights from the days before it."""
    return WRMSSE.fit(data.m5.ids, data.m5.sales[:, :start], data.m5.prices[:, :start])


def make_validation(data: SalesData, context: int):
    metric, actual = wrmsse_for(data, data.val_start), data.m5.sales[:, data.val_start:data.test_start]

    def validate(model: nn.Module) -> dict[str, float]:
        predicted = forecast(model, data, data.val_start - 1, context)
        return {"val_wrmsse": metric(actual, predicted), "val_rmse": float(np.sqrt(((predicted - actual) ** 2).mean()))}
    return validate


# --- train --------------------------------------------------------------------------------------------------------

def build_job(cfg: TrainConfig) -> tuple[TrainingJob, SalesData, dict[str, Any]]:
    from training.baselines.forecasters import selected

    opts = cfg.task_options
    selected(opts["baselines"])  # a typo is refused now, not after training, when evaluation would need it
    data = load_data(Path(cfg.data_dir), opts["series"], opts["last_day"])
    origins = training_origins(data, opts["context"], opts["origin_stride"])
    if not len(origins):
        raise ValueError(f"no training windows: the series need {opts['context']} days of history before the "
                         f"validation window (lower --context)")
    data.windows = len(origins)
    config = model_config(opts, data.vocab)
    job = TrainingJob(model=build_model(config), train_set=SalesWindows(data, origins, opts["context"]),
                      loss=scaled_mse, validate=make_validation(data, opts["context"]), monitor="val_wrmsse",
                      collate=keep_batch, **DEFAULTS)
    return job, data, config


def save(cfg: TrainConfig, data: SalesData, config: dict[str, Any], result: FitResult) -> Path:
    """The weights, and what serving forecasts from without the data folder: every series' ids, sales and prices,
    and the calendar's covariates (past the sales, to the calendar's end)."""
    m5 = data.m5
    manifest = CheckpointManifest(
        task=SPEC.name, model=config,
        preprocessing={"covariates": COVARIATES, "id_vocabulary": data.vocab.values, "horizon": HORIZON,
                       "context": config["context"], "first_day": m5.first_day,
                       "first_date": str(m5.calendar["date"].iloc[0].date()),
                       "last_sales_day": m5.first_day + m5.days - 1, "calendar_days": len(m5.calendar),
                       "interval": interval_calibration(data, config, result.best_state)},
        training=result.record(cfg, data_fingerprint=m5.fingerprint, series=len(m5.ids), days=m5.days,
                               train_windows=data.windows, history=result.history),
        metrics=result.best_metrics)
    out = save_checkpoint(Path(cfg.out), manifest, result.best_state)
    save_arrays(out / HISTORY_FILE, {"sales": m5.sales, "prices": m5.prices, **calendar_arrays(m5.calendar)})
    m5.ids.to_csv(out / SERIES_FILE, index=False)
    record_files(out, manifest, [HISTORY_FILE, SERIES_FILE])
    return out


REPORTED_LEVELS = (50, 80, 95)  # interval levels (%) whose test coverage the report gives


def origin_scale(data: SalesData, origin: int, context: int) -> np.ndarray:
    """(series,) each series' level in the window the network reads when forecasting from `origin`."""
    window = slice(origin - context + 1, origin + 1)
    level = window_scale(torch.from_numpy(data.m5.sales[:, window]), torch.from_numpy(data.alive[:, window]))
    return level[:, 0].numpy()


def calibration_errors(predict: Callable[[int], np.ndarray], data: SalesData, context: int) -> list[np.ndarray]:
    """Scaled errors per week ahead of forecasts from each of the 28 origins in the validation window, every day
    ahead that stays before the test days (day 1 from 28 origins, day 28 from one): days the network never trained
    on, more of them than the one validation forecast gives. `predict(origin)` is (series, 28)."""
    by_week: list[list[np.ndarray]] = [[] for _ in range(HORIZON // 7)]
    for origin in range(data.val_start - 1, data.test_start - 1):
        ahead = min(HORIZON, data.test_start - 1 - origin)
        errors = (data.m5.sales[:, origin + 1:origin + 1 + ahead] - predict(origin)[:, :ahead]) \
            / origin_scale(data, origin, context)[:, None]
        started = data.alive[:, origin] > 0
        for day in range(ahead):
            by_week[day // 7].append(errors[started, day])
    return [np.concatenate(week) for week in by_week]


def interval_calibration(data: SalesData, config: dict[str, Any], state: dict[str, torch.Tensor]) -> dict:
    """The network's conformal calibration (training.metrics.intervals); the test days check its coverage."""
    model = build_model(config)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        errors = calibration_errors(lambda origin: forecast(model, data, origin, config["context"]), data,
                                    config["context"])
    return intervals.calibrate(errors)


def calendar_arrays(calendar: pd.DataFrame) -> dict[str, np.ndarray]:
    from training.data.m5_features import calendar_covariates

    return {f"calendar/{k}": v for k, v in calendar_covariates(calendar).items()}


# --- evaluation report --------------------------------------------------------------------------------------------

def evaluate(ckpt: Path, data_dir: Path | None = None, cv: int | None = None, cv_step: int | None = None
             ) -> dict[str, Any]:
    """The network and the baselines on the 28 held-out test days, each also forecasting the validation days (which
    fit the ensembles' weights); WRMSSE (with its 12 levels), RMSE, MAE and training time per model; plots. With
    `cv`, also the rolling-origin evaluation over that many windows (training.tasks.sales_backtest)."""
    from training.baselines.forecasters import run_baselines
    from training.baselines.forecasters import selected as selected_baselines
    from training.metrics.ensembles import ensembles

    manifest, model = load_model(ckpt)
    trained, pre = manifest.training, manifest.preprocessing
    data_dir = Path(data_dir or trained["data_dir"])
    data = load_data(data_dir, trained["task_options"]["series"], trained["task_options"].get("last_day"))
    context = pre["context"]
    val_metric, test_metric = wrmsse_for(data, data.val_start), wrmsse_for(data, data.test_start)
    val_actual = data.m5.sales[:, data.val_start:data.test_start]
    test_actual = data.m5.sales[:, data.test_start:]
    start = time.perf_counter()
    with torch.no_grad():
        network = {"val": forecast(model, data, data.val_start - 1, context),
                   "test": forecast(model, data, data.test_start - 1, context),
                   "future": forecast(model, data, data.m5.days - 1, context)}
    inference_seconds = time.perf_counter() - start
    name = trained["task_options"]["model"]
    bounds = intervals.bounds(network["test"], origin_scale(data, data.test_start - 1, context), pre["interval"],
                              REPORTED_LEVELS)
    forecasts = {name: network}
    seconds = {name: trained["train_seconds"]}
    for baseline, (result, spent) in run_baselines(selected_baselines(trained["task_options"]["baselines"]),
                                                   data).items():
        forecasts[baseline], seconds[baseline] = result, spent
    combined = ensembles(forecasts, val_actual, val_metric)
    results = {**forecasts, **{k: v["forecast"] for k, v in combined.items()}}
    kinds = {label: "ensemble" if label in combined else "network" if label == name else "baseline"
             for label in results}
    table = score_table(data, results, kinds, seconds, val_metric, test_metric)
    best = table[0]
    served = write_served_models(ckpt, data, results, table, name, pre["interval"], context)
    days = data.m5.first_day + np.arange(data.m5.days)
    report: dict[str, Any] = {
        "task": SPEC.name, "subset": f"{len(data.m5.ids)} series", "series": len(data.m5.ids), "data": data.m5.source,
        "test_days": f"d_{days[data.test_start]}..d_{days[-1]}",
        "validation_days": f"d_{days[data.val_start]}..d_{days[data.test_start - 1]}",
        "weights_note": ("WRMSSE weights and scales computed over the series present, each level renormalised to "
                         "sum to 1" if len(data.m5.ids) < 30490 else "WRMSSE over the full M5 hierarchy"),
        "models": table, "best_model": best["model"], "best_wrmsse": best["wrmsse"],
        "network_wrmsse": next(r["wrmsse"] for r in table if r["model"] == name),
        "network_levels": test_metric.per_level(test_actual, network["test"]),
        "ensemble_weights": {k: v["weights"] for k, v in combined.items()},
        "ensemble_note": ("ensemble_fitted's weights were fitted on the validation days, so its val_wrmsse is "
                          "in-sample; ensemble_best3 averages the three best models on the validation days"),
        "network_inference_seconds": round(inference_seconds, 3),
        "served": served,
        "network_interval": {"method": pre["interval"]["method"],
                             "calibration_errors_per_week": pre["interval"]["errors_per_week"],
                             "test_coverage": intervals.coverage(test_actual, bounds, REPORTED_LEVELS)},
    }
    report["plots"] = [p.name for p in plot_report(ckpt, data, results, table, name, bounds, test_metric)]
    if cv:
        from training.tasks.sales_backtest import STEP, backtest

        tested = {row["model"]: row["wrmsse"] for row in table}
        last_day = data.m5.first_day + data.m5.days - 1
        report["rolling"] = backtest(ckpt, data_dir, last_day, cv, cv_step or STEP, tested)
    return write_report(ckpt, manifest, report, {"best_wrmsse": report["best_wrmsse"],
                                                 "wrmsse": report["network_wrmsse"]},
                        files=[SERVED_FILE, FORECASTS_FILE])


def score_table(data: SalesData, results: dict[str, dict[str, np.ndarray]], kinds: dict[str, str],
                seconds: dict[str, float], val_metric: WRMSSE, test_metric: WRMSSE) -> list[dict[str, Any]]:
    """One row per model or ensemble, best test WRMSSE first."""
    val_actual, test_actual = data.m5.sales[:, data.val_start:data.test_start], data.m5.sales[:, data.test_start:]
    table = []
    for label, result in results.items():
        error = result["test"] - test_actual
        table.append({"model": label, "kind": kinds[label], "wrmsse": test_metric(test_actual, result["test"]),
                      "val_wrmsse": val_metric(val_actual, result["val"]),
                      "rmse": float(np.sqrt((error ** 2).mean())), "mae": float(np.abs(error).mean()),
                      "train_seconds": round(seconds[label], 2) if label in seconds else None})
    return sorted(table, key=lambda row: row["wrmsse"])


def plot_report(ckpt: Path, data: SalesData, results: dict[str, dict[str, np.ndarray]], table: list[dict],
                network: str, bounds: dict[str, np.ndarray], test_metric: WRMSSE) -> list[Path]:
    """forecasts.png (the best model, the network with its 80% interval, seasonal naive) and wrmsse_levels.png."""
    from training.reports.sales_plots import plot_forecasts, plot_levels

    test_actual = data.m5.sales[:, data.test_start:]
    shown = list(dict.fromkeys([table[0]["model"], network,
                                *(["seasonal_naive"] if "seasonal_naive" in results else [])]))
    return [plot_forecasts(ckpt / "forecasts.png", data, {k: results[k]["test"] for k in shown},
                           plot_series_choice(test_metric), max(0, data.test_start - 112),
                           band=(network, bounds["0.1"], bounds["0.9"])),
            plot_levels(ckpt / "wrmsse_levels.png",
                        {row["model"]: test_metric.per_level(test_actual, results[row["model"]]["test"])
                         for row in table[:6]})]


def write_served_models(ckpt: Path, data: SalesData, results: dict[str, dict[str, np.ndarray]], table: list[dict],
                        network: str, network_calibration: dict, context: int) -> dict[str, Any]:
    """What the API serves for the known series besides the live network: every report row's forecast of the 28
    days after the data (FORECASTS_FILE) and its interval calibration, and which row is best on the validation
    days among those scored out of sample (SERVED_FILE). The network keeps its rolling-origin calibration; the
    others are calibrated on their one validation forecast (7 days x series per week ahead). Returns the served
    row's summary for the report, with its interval coverage on the test days."""
    from training.metrics.ensembles import IN_SAMPLE

    origin = data.val_start - 1
    started = data.alive[:, origin] > 0
    errors = {label: (data.m5.sales[:, data.val_start:data.test_start] - result["val"])
              / origin_scale(data, origin, context)[:, None] for label, result in results.items()}
    models = {row["model"]: {"kind": row["kind"], "val_wrmsse": row["val_wrmsse"], "calibration": (
        network_calibration if row["model"] == network else intervals.calibrate(
            [errors[row["model"]][started, 7 * w:7 * w + 7].ravel() for w in range(HORIZON // 7)]))}
        for row in table}
    best = min((row for row in table if row["model"] not in IN_SAMPLE), key=lambda row: row["val_wrmsse"])["model"]
    save_arrays(ckpt / FORECASTS_FILE, {label: results[label]["future"].astype(np.float32) for label in models})
    write_json_atomic(ckpt / SERVED_FILE, {"best": best, "network": network, "models": models})
    test_bounds = intervals.bounds(results[best]["test"], origin_scale(data, data.test_start - 1, context),
                                   models[best]["calibration"], REPORTED_LEVELS)
    return {"model": best, "val_wrmsse": models[best]["val_wrmsse"],
            "why": "lowest validation WRMSSE of the rows scored out of sample (not " + ", ".join(IN_SAMPLE) + ")",
            "test_coverage": intervals.coverage(data.m5.sales[:, data.test_start:], test_bounds, REPORTED_LEVELS)}


def plot_series_choice(metric: WRMSSE, count: int = 3) -> list[int]:
    """The bottom-level series that weigh most in the metric (what a reader of the report cares about)."""
    bottom = metric.aggregations[-1].matrix.T @ metric.weights[-1]  # level 12 is ordered by item and store
    return [int(i) for i in np.argsort(-bottom, kind="stable")[:count]]


# --- generated data -----------------------------------------------------------------------------------------------

def synthesize(out: Path, seed: int = 0) -> list[Path]:
    from training.data.m5_synthetic import synthesize_m5

    return synthesize_m5(out, series=40, seed=seed)
