"""Hyperparameter search with Optuna (`modelyard tune TASK`): a TPE sampler proposes each trial's settings from the
recipe's `tune_space(trial)`, every trial is a real training run, and a median pruner stops a trial whose validation
metric after an epoch trails the other trials' at that epoch.

Writes to OUT: trials.csv (one row per trial), optimization_history.png, param_importances.png, best.json (the best
trial's option values, which `modelyard train TASK --config best.json` takes) and each trial's checkpoint under
trials/NNN.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import TrainConfig


@dataclass
class TuneResult:
    best_value: float
    best_options: dict[str, Any]
    trials: int
    pruned: int
    seconds: float
    files: list[Path]


class TrialPruned(Exception):
    pass


def tune(task: str, base: TrainConfig, trials: int, timeout: float | None = None, seed: int = 0) -> TuneResult:
    import optuna

    from training.launch import run_training
    from training.tasks import get_task
    from training.tasks.specs import task_spec

    recipe = get_task(task)
    monitor, mode = task_spec(task).tune_monitor
    out = Path(base.out)
    out.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize", sampler=sampler,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))

    def objective(trial: optuna.Trial) -> float:
        engine, options = recipe.tune_space(trial)
        trial.set_user_attr("options", {**engine, **options})
        cfg = TrainConfig(**{**base.to_dict(), **engine, "out": str(out / "trials" / f"{trial.number:03d}"),
                             "task_options": {**base.task_options, **options}, "evaluate": False})

        def report(record: dict[str, Any]) -> None:
            trial.report(record[monitor], record["epoch"])
            if trial.should_prune():
                raise TrialPruned

        try:
            run_training(cfg, on_epoch=report)
        except TrialPruned:
            raise optuna.TrialPruned() from None
        from training.checkpoint import read_manifest

        return float(read_manifest(Path(cfg.out)).metrics[monitor])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    study.optimize(objective, n_trials=trials, timeout=timeout, catch=())
    files = write_study(study, out, monitor)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return TuneResult(study.best_value, study.best_trial.user_attrs["options"], len(study.trials), pruned,
                      time.perf_counter() - start, files)


def write_study(study, out: Path, monitor: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    frame = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params"))
    frame = frame.rename(columns={"value": monitor})
    frame.to_csv(out / "trials.csv", index=False)
    files = [out / "trials.csv"]
    for name, plot in (("optimization_history.png", plot_optimization_history),
                       ("param_importances.png", plot_param_importances)):
        try:
            plot(study)
        except (ValueError, RuntimeError) as exc:  # importances need two or more finished trials
            fig, ax = plt.subplots(figsize=(6, 2))
            ax.text(0.5, 0.5, f"not available: {exc}", ha="center", wrap=True)
            ax.axis("off")
        plt.gcf().set_size_inches(8, 4.5)
        plt.tight_layout()
        plt.savefig(out / name, dpi=110)
        plt.close("all")
        files.append(out / name)
    (out / "best.json").write_text(json.dumps(study.best_trial.user_attrs["options"], indent=2) + "\n")
    files.append(out / "best.json")
    return files
