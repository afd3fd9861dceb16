"""What `train`, `evaluate` and `export` do, printing as they go; the command line and the demo both call these.

Each raises `CommandError` with a one-line reason for anything a user can fix (bad data, an impossible strategy, a
damaged checkpoint), which the command line prints without a traceback.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


class CommandError(RuntimeError):
    pass


def train_config(task: str, engine: dict[str, Any], options: dict[str, Any]):
    """A TrainConfig from the engine's option values and the task's (undeclared task options refused)."""
    from training.config import TrainConfig
    from training.engine.backends import DEFAULT_STRATEGY
    from training.tasks import task_options

    values = {k: v for k, v in engine.items() if v is not None}
    values["out"] = str(values["out"])
    if values.get("data_dir") is not None:
        values["data_dir"] = str(values["data_dir"])
    backend = values.get("backend", "torch")
    values["strategy"] = values.get("strategy") or DEFAULT_STRATEGY.get(backend, "ddp")
    try:
        return TrainConfig(task=task, **values, task_options=task_options(task, options))
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def train(task: str, engine: dict[str, Any], options: dict[str, Any]) -> Path:
    """Train TASK into engine["out"], print the training summary, then (unless evaluate is off) the report."""
    from training.data.errors import DataFormatError
    from training.engine.backends import StrategyUnavailable
    from training.launch import TrainingFailed, run_training

    cfg = train_config(task, engine, options)
    if cfg.synthetic:
        console.print(f"data: generated {task} data (synthetic, real file format)")
    try:
        run_training(cfg)
    except (StrategyUnavailable, TrainingFailed, DataFormatError, FileNotFoundError, ValueError, RuntimeError,
            OSError) as exc:
        text = str(exc).strip()
        raise CommandError(text.splitlines()[0] if text else type(exc).__name__) from None
    out = Path(cfg.out)
    if cfg.node_rank:  # another machine's launcher: node 0 owns the checkpoint and its report
        console.print(f"node {cfg.node_rank}: training finished; node 0 wrote {out}")
        return out
    console.print(f"checkpoint: {out}")
    print_train_summary(out)
    if cfg.evaluate:
        evaluate(out)
    return out


def evaluate(ckpt: Path, data_dir: Path | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """`options`: the evaluation options of the checkpoint's task that were given (TaskSpec.evaluate_options)."""
    from training.checkpoint import CheckpointError, read_manifest
    from training.data.errors import DataFormatError
    from training.engine.backends import StrategyUnavailable
    from training.launch import TrainingFailed
    from training.tasks import get_task
    from training.tasks.specs import task_spec

    options = options or {}
    try:
        name = read_manifest(ckpt).task
        declared = {option.name for option in task_spec(name).evaluate_options}
        unknown = sorted(set(options) - declared)
        if unknown:
            raise ValueError(f"--{unknown[0].replace('_', '-')}: a {name} checkpoint's evaluation has no such option")
        with console.status("evaluating") if not options else nullcontext():  # a long one shows its own progress
            report = get_task(name).evaluate(Path(ckpt), data_dir, **options)
    except (CheckpointError, DataFormatError, FileNotFoundError, ValueError, StrategyUnavailable,
            TrainingFailed) as exc:
        raise CommandError(str(exc).strip().splitlines()[0]) from None
    table = Table(title=f"{report['task']} evaluation ({report.get('subset', '')})")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("baseline", justify="right")
    baseline = report.get("baseline", {})
    spec = task_spec(report["task"])
    for key, value in report.items():
        if isinstance(value, float) or value is None and key in (spec.headline[0], *spec.compared):
            table.add_row(key, fmt(value), fmt(baseline.get(key)))
    console.print(table)
    if report.get("models"):  # a task that compares several models reports one row per model
        rows = report["models"]
        compared = Table(title="models on the test data, best first")
        for column in rows[0]:
            compared.add_column(column, justify="left" if column in ("model", "kind") else "right")
        for row in rows:
            compared.add_row(*(fmt(v) if isinstance(v, float) or v is None else str(v) for v in row.values()))
        console.print(compared)
    if report.get("rolling"):  # a rolling-origin evaluation: each model over several windows
        rolling = report["rolling"]
        windows = Table(title=f"rolling origin: {len(rolling['windows'])} windows ({', '.join(rolling['windows'])})")
        for column in ("model", "WRMSSE mean", "spread (std)", "per window"):
            windows.add_column(column, justify="left" if column == "model" else "right")
        for row in rolling["models"]:
            windows.add_row(row["model"], fmt(row["wrmsse_mean"]), fmt(row["wrmsse_std"]),
                            " ".join(fmt(v) for v in row["per_window"]))
        console.print(windows)
    console.print(f"report: {Path(ckpt) / 'report.json'}")
    for plot in report.get("plots", []):
        console.print(f"plot:   {Path(ckpt) / plot}")
    return report


def export(ckpt: Path, format_: str = "onnx", weights: str | None = None, out: Path | None = None) -> float:
    from training.checkpoint import CheckpointError
    from training.export import export_checkpoint

    try:
        exported = export_checkpoint(Path(ckpt), format_, weights, out)
    except (CheckpointError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    console.print(f"wrote {Path(ckpt) / exported.file}")
    console.print(f"max abs difference {exported.compared}: {exported.max_abs_diff:.3e}"
                  + (f" ({exported.note})" if exported.note else ""))
    return exported.max_abs_diff


def bento(task: str, ckpt: Path) -> str:
    from bentoml.exceptions import BentoMLException

    from serving.bento import build_bento
    from training.checkpoint import CheckpointError, read_manifest

    try:
        if (held := read_manifest(ckpt).task) != task:
            raise ValueError(f"{ckpt} holds a {held} model, not a {task} model")
        built = build_bento(ckpt)
    except (CheckpointError, ValueError, BentoMLException) as exc:
        raise CommandError(str(exc)) from None
    console.print(f"model {built.model} in BentoML's model store (bentoml models list)", soft_wrap=True)
    console.print(f"Bento {built.bento} at {built.path} (bentoml list)", soft_wrap=True)
    console.print(f"serve it from any folder: bentoml serve {built.bento} --port 3000", soft_wrap=True)
    return built.bento


def print_train_summary(out: Path) -> None:
    from training.checkpoint import read_manifest

    manifest = read_manifest(out)
    t = manifest.training
    table = Table(title="training summary")
    table.add_column("item")
    table.add_column("value", justify="right")
    rows = [("backend / strategy", f"{t['backend']} / {t['strategy']}"), ("processes", str(t["nproc"] * t["nnodes"])),
            ("precision", t["precision"]), ("epochs run", str(t["epochs_run"])), ("optimizer steps", str(t["steps"])),
            ("train time (s)", f"{t['train_seconds']:.1f}"), ("samples/s", f"{t['samples_per_second']:.0f}"),
            ("stopped early", str(t["stopped_early"]))]
    rows += [(key, fmt(value)) for key, value in manifest.metrics.items()]
    for row in rows:
        table.add_row(*row)
    console.print(table)


def fmt(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else json.dumps(value)
