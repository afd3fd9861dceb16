"""Rolling-origin evaluation of the sales models (`modelyard evaluate CKPT --cv N`): N windows of 28 days, the last
one the test days, each `step` days before the next. In each window every model is fitted on the days before it
only, as the evaluation does for the test days: the network trained again with the checkpoint's settings (on the
sales up to the window's end, its last 28 days held out: `--last-day`), the baselines refitted, the ensembles
weighted on the 28 days before the window. Each model's WRMSSE per window, then its mean and spread: a ranking that
is not one window's luck."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import TrainConfig

STEP = 28  # days between two windows' ends by default: windows that do not overlap


def backtest(ckpt: Path, data_dir: Path, last_day: int, windows: int, step: int, last_window: dict[str, float]
             ) -> dict[str, Any]:
    """Windows ending at d_`last_day` (the data's last day) and every `step` days before; `last_window`: each
    model's WRMSSE on the test days (the evaluation's own window, not computed again)."""
    cfg = TrainConfig.load(ckpt / "train_config.json")
    ends = [last_day - k * step for k in range(windows)]
    scores = [last_window, *(window_scores(cfg, data_dir, ckpt / "backtest" / f"d_{end}", end) for end in ends[1:])]
    rows = []
    for model in last_window:
        if all(model in window for window in scores):
            values = [window[model] for window in scores]
            rows.append({"model": model, "wrmsse_mean": float(np.mean(values)), "wrmsse_std": float(np.std(values)),
                         "per_window": [round(v, 4) for v in values]})
    return {"windows": [f"d_{end - 27}..d_{end}" for end in ends], "step": step,
            "models": sorted(rows, key=lambda row: row["wrmsse_mean"])}


def window_scores(cfg: TrainConfig, data_dir: Path, out: Path, last_day: int) -> dict[str, float]:
    """Every model's WRMSSE on the 28 days ending at d_`last_day`, fitted on the days before them."""
    from training.baselines.forecasters import run_baselines, selected
    from training.launch import run_training
    from training.metrics.ensembles import ensembles
    from training.models import load_model
    from training.tasks.sales import forecast, load_data, wrmsse_for

    options = cfg.task_options
    run = dataclasses.replace(cfg, out=str(out), data_dir=str(data_dir), resume=False,
                              task_options={**options, "last_day": last_day})
    run_training(run)
    model = load_model(out)[1]
    data = load_data(data_dir, options["series"], last_day)
    with torch.no_grad():
        forecasts = {options["model"]: {split: forecast(model, data, origin, options["context"])
                                        for split, origin in (("val", data.val_start - 1),
                                                              ("test", data.test_start - 1))}}
    for name, (result, _) in run_baselines(selected(options["baselines"]), data).items():
        forecasts[name] = result
    val_actual = data.m5.sales[:, data.val_start:data.test_start]
    combined = ensembles(forecasts, val_actual, wrmsse_for(data, data.val_start))
    results = {**forecasts, **{label: value["forecast"] for label, value in combined.items()}}
    metric, actual = wrmsse_for(data, data.test_start), data.m5.sales[:, data.test_start:]
    return {label: metric(actual, result["test"]) for label, result in results.items()}
