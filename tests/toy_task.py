"""A sixth task as a newcomer would add one (README "Adding a task"): its spec, recipe and model in its own files (here
one module plays all three), registered by one line in training.tasks.specs.REGISTERED. It fits a line to noisy
points; tests/test_task_registry.py checks that every command takes it without another file changing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from training.checkpoint import CheckpointManifest, load_checkpoint, save_checkpoint, write_report
from training.config import TrainConfig
from training.demo_runs import DemoRun
from training.engine.trainer import FitResult, TrainingJob
from training.export import OnnxSignature
from training.models import build_model
from training.options import Option
from training.tasks.specs import TaskSpec

SPEC = TaskSpec(name="toy", summary="Toy: fit a line to noisy points.", recipe=__name__, models=__name__,
                data_subdir="toy", headline=("mse", "test MSE"), compared=("mse",),
                options=(Option("held_out", int, 112, "points kept for validation and test", minimum=1),),
                demo_runs=lambda: [DemoRun("toy", "a line through noisy points", {"synthetic": True, "epochs": 3})])

# --- model (what SPEC.models names) -------------------------------------------------------------------------------

ARCHS = ("toy_line",)


def build(config: dict[str, Any]) -> nn.Module:
    return nn.Linear(1, 1)


class PointSignature(OnnxSignature):
    def example(self, batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch, 1, generator=torch.Generator().manual_seed(seed)),)


def onnx_signature(manifest: CheckpointManifest, model: nn.Module) -> OnnxSignature:
    return PointSignature(model, ["x"], {"x": {0: "batch"}, "y": {0: "batch"}}, "y")


# --- recipe (what SPEC.recipe names) ------------------------------------------------------------------------------

def synthesize(out: Path, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, 512)
    path = Path(out) / "points.csv"
    np.savetxt(path, np.column_stack([x, 3 * x + 0.5 + rng.normal(0, 0.05, x.size)]), delimiter=",")
    return [path]


def _points(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    points = torch.from_numpy(np.loadtxt(Path(data_dir) / "points.csv", delimiter=",", dtype=np.float32))
    return points[:, :1], points[:, 1:]


def build_job(cfg: TrainConfig) -> tuple[TrainingJob, Path, dict[str, Any]]:
    x, y = _points(cfg.data_dir)
    cut = len(x) - cfg.task_options["held_out"]
    config = {"arch": "toy_line"}

    def validate(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"val_mse": float(nn.functional.mse_loss(model(x[cut:]), y[cut:]))}

    job = TrainingJob(model=build_model(config), train_set=TensorDataset(x[:cut], y[:cut]),
                      loss=lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1]),
                      validate=validate, monitor="val_mse", batch_size=32, lr=0.1, epochs=10, warmup_steps=1)
    return job, Path(cfg.data_dir), config


def save(cfg: TrainConfig, data_dir: Path, config: dict[str, Any], result: FitResult) -> Path:
    manifest = CheckpointManifest(task=SPEC.name, model=config, training=result.record(cfg),
                                  preprocessing={"held_out": cfg.task_options["held_out"]},
                                  metrics=result.best_metrics)
    return save_checkpoint(Path(cfg.out), manifest, result.best_state)


def evaluate(ckpt: Path, data_dir: Path | None = None) -> dict[str, Any]:
    manifest, weights = load_checkpoint(ckpt)
    model = build_model(manifest.model)
    model.load_state_dict(weights)
    x, y = _points(data_dir or manifest.training["data_dir"])
    cut = len(x) - manifest.preprocessing["held_out"]
    with torch.no_grad():
        mse = float(nn.functional.mse_loss(model(x[cut:]), y[cut:]))
    report = {"task": SPEC.name, "mse": mse, "baseline": {"mse": float(y[cut:].var())}}  # the mean's error
    return write_report(ckpt, manifest, report, {"mse": mse})
