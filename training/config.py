"""Training configuration: plain data, written to OUT/train_config.json and into the manifest."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    task: str
    out: str
    data_dir: str | None = None
    subset: str = "FD001"
    synthetic: bool = False
    model: str | None = None  # task-specific architecture name; None = the task's default
    objective: str | None = None  # task-specific (turbofan: rul | reconstruction)
    backend: str = "torch"
    strategy: str = "ddp"
    tp: int = 1
    pp: int = 1
    offload: bool = False
    nproc: int = 1
    nnodes: int = 1
    node_rank: int | None = None
    rdzv_endpoint: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    grad_accum: int = 1
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None  # per process micro-batch
    lr: float | None = None
    weight_decay: float = 1e-4
    warmup_steps: int | None = None
    max_grad_norm: float = 1.0
    checkpointing: bool = False
    early_stop_patience: int | None = None
    seed: int = 0
    resume: bool = False
    evaluate: bool = True
    task_options: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls(**json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
