"""Training configuration: plain data, written to OUT/train_config.json and into the manifest.

The engine's options (every task takes them) are declared here; each task declares its own in its spec's `options`
(training.tasks.specs), and their values travel in `task_options`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.options import Option


@dataclass
class TrainConfig:
    task: str
    out: str
    data_dir: str | None = None
    synthetic: bool = False
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
    precision: str = "auto"  # resolved per task and device by training.launch.planned (backends take no "auto")
    grad_accum: int = 1
    epochs: int | None = None
    max_steps: int | None = None
    time_limit: float | None = None  # seconds of training (the schedule is planned to fit)
    batch_size: int | None = None  # per process micro-batch
    optimizer: str | None = None  # None: the task's default
    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    max_grad_norm: float = 1.0
    checkpointing: bool = False
    early_stop_patience: int | None = None
    seed: int = 0
    resume: bool = False
    evaluate: bool = True
    task_options: dict[str, Any] = field(default_factory=dict)  # the spec's declared options, defaults filled
    fingerprint: dict[str, str] | None = None  # code, data and settings this run was made from (training.fingerprint)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls(**json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ENGINE_OPTIONS: tuple[Option, ...] = (
    Option("out", Path, None, "checkpoint directory to write", required=True),
    Option("data_dir", Path, None, "dataset folder (default: $MODELYARD_DATA/<task data>)"),
    Option("synthetic", bool, False, "train on generated data in the real file format"),
    Option("backend", str, "torch", "distributed backend", choices=("torch", "colossalai", "fairscale")),
    Option("strategy", str, None, "torch: ddp fsdp; colossalai: ddp zero1 zero2 gemini hybrid fsdp; "
                                  "fairscale: oss pipe fsdp tp (default: ddp, zero2, oss)"),
    Option("tp", int, 1, "tensor-parallel size (colossalai hybrid, fairscale tp)", minimum=1),
    Option("pp", int, 1, "pipeline-parallel size (colossalai hybrid)", minimum=1),
    Option("offload", bool, False, "keep optimizer state in CPU memory (colossalai zero2/gemini)"),
    Option("nproc", int, 1, "processes on this machine", minimum=1),
    Option("nnodes", int, 1, "machines taking part", minimum=1),
    Option("node_rank", int, None, "this machine's rank (static rendezvous)", minimum=0),
    Option("rdzv_endpoint", str, None, "HOST:PORT every machine can reach"),
    Option("device", str, "auto", "where to train", choices=("auto", "cpu", "cuda")),
    Option("precision", str, "auto", "fp32, bf16 autocast, fp16 with loss scaling (GPU), or auto: the task's "
                                     "choice where the device computes it natively (image: bf16), else fp32",
           choices=("auto", "fp32", "bf16", "fp16")),
    Option("grad_accum", int, 1, "micro-batches per optimizer step", minimum=1),
    Option("epochs", int, None, "epochs (task default otherwise)", minimum=1),
    Option("max_steps", int, None, "stop after this many optimizer steps", minimum=1),
    Option("time_limit", float, None, "seconds of training: the schedule is planned to end within them",
           minimum=1),
    Option("batch_size", int, None, "micro-batch per process (task default otherwise)", minimum=1),
    Option("optimizer", str, None, "adamw or sgd (Nesterov momentum); task default otherwise",
           choices=("adamw", "sgd")),
    Option("lr", float, None, "peak learning rate (the optimizer's task default otherwise)", minimum=0),
    Option("weight_decay", float, None, "weight decay (the optimizer's task default otherwise)", minimum=0),
    Option("checkpointing", bool, False, "activation checkpointing on each model block"),
    Option("early_stop_patience", int, None, "epochs without validation gain before stopping", minimum=1),
    Option("seed", int, 0, "random seed (weights, data order, splits)"),
    Option("resume", bool, False, "continue from OUT/state"),
    Option("evaluate", bool, True, "write the evaluation report after training"),
)
