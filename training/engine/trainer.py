"""The training loop, the same for every backend and task.

A recipe hands over a `TrainingJob` (model, datasets, loss, validation); the loop owns accumulation, clipping, the
warmup + cosine schedule, mixed precision (through the backend), early stopping, logging, and resumable state.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from training.checkpoint import save_weights
from training.config import TrainConfig
from training.data.batching import BucketBatchSampler
from training.engine.backends import Backend
from training.engine.backends.base import OptimizerSpec, PipelineLoss
from training.engine.distributed import DistContext
from training.engine.resume import ResumeState, load_resume_state, rng_state, save_resume_state, set_rng_state

# Optimizers by --optimizer name: class, fixed arguments, and learning rate / weight decay when a task names none.
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any], dict[str, float]]] = {
    "adamw": (torch.optim.AdamW, {}, {"lr": 1e-3, "weight_decay": 1e-4}),
    "sgd": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}, {"lr": 0.05, "weight_decay": 5e-4}),
}


EPOCHS_DIR = "epochs"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainingJob:
    model: nn.Module
    train_set: Dataset
    loss: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]
    validate: Callable[[nn.Module], dict[str, float]]  # runs on every rank over the whole validation set
    monitor: str  # key of validate()'s result used for early stopping and best-model selection
    mode: str = "min"
    batch_size: int = 256
    lr: float = 1e-3  # for `optimizer`; another optimizer takes its entry in `optimizer_defaults`
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    optimizer_defaults: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {lr, weight_decay}
    epochs: int = 30
    warmup_steps: int = 50
    collate: Callable[[list[Any]], tuple[torch.Tensor, ...]] | None = None  # None: stack tensors
    lengths: Sequence[int] | None = None  # per-sample lengths: length-bucketed batches instead of plain shuffling
    pipeline: PipelineLoss | None = None  # how pipeline-parallel stages feed and score the model; None: cannot pipe
    # Parameter groups with learning rates of their own (transfer learning: a frozen body, a new head):
    # group_of(plain parameter name) -> group index; lr_scales(epoch) -> a factor per group index.
    group_of: Callable[[str], int] | None = None
    lr_scales: Callable[[int], Sequence[float]] | None = None
    snapshot_epochs: bool = False  # keep every epoch's weights in OUT/epochs/ (for curves of test metrics)
    lr_floor: float = 0.1  # the cosine decay ends at this fraction of the peak learning rate


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor] | None  # rank 0 only
    best_metrics: dict[str, float]
    epochs_run: int
    steps: int
    train_seconds: float
    samples_per_second: float
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, cfg: TrainConfig, **own: Any) -> dict[str, Any]:
        """The manifest's `training` block: the run's settings, what the recipe adds (`own`) and how the run went."""
        return {**{k: v for k, v in cfg.to_dict().items() if k not in ("out", "resume")}, **own,
                "epochs_run": self.epochs_run, "steps": self.steps, "train_seconds": round(self.train_seconds, 2),
                "stopped_early": self.stopped_early, "samples_per_second": round(self.samples_per_second, 1)}


def epoch_snapshots(out: Path) -> list[str]:
    """The per-epoch weight files a run kept (--snapshots), relative to its checkpoint folder."""
    return [str(p.relative_to(out)) for p in sorted((Path(out) / EPOCHS_DIR).glob("epoch-*.safetensors"))]


def lr_factor(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """Linear warmup then cosine decay to `floor` of the peak; a pure function of the step, so resuming needs no
    state."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_spec(job: TrainingJob, cfg: TrainConfig) -> OptimizerSpec:
    """--optimizer (else the task's), with --lr/--weight-decay, else that optimizer's defaults for this task."""
    name = cfg.optimizer or job.optimizer
    cls, fixed, generic = OPTIMIZERS[name]
    task_defaults = {"lr": job.lr, "weight_decay": job.weight_decay} if name == job.optimizer else {}
    chosen = {**generic, **job.optimizer_defaults.get(name, {}), **task_defaults}
    lr = cfg.lr if cfg.lr is not None else chosen["lr"]
    decay = cfg.weight_decay if cfg.weight_decay is not None else chosen["weight_decay"]
    return OptimizerSpec(cls, {**fixed, "lr": lr, "weight_decay": decay}, job.group_of)


class TimeBudget:
    """Fits the run into --time-limit seconds without cutting the learning-rate schedule short: after a few steps,
    and again after every epoch (validation included), the steps that fit in the time left at the pace so far
    become the run's total, so the cosine decay still reaches its end. Every rank takes rank 0's plan: ranks
    stepping with different learning rates would drift apart."""

    FIRST_PLAN_STEP = 10

    def __init__(self, limit: float | None, requested_steps: int) -> None:
        self.limit, self.requested = limit, requested_steps

    def plan(self, step: int, elapsed: float, device: torch.device) -> int:
        pace = elapsed / max(step, 1)
        fit = step + int(max(0.0, self.limit - elapsed) / max(pace, 1e-9))
        planned = torch.tensor(max(step, min(self.requested, fit)), dtype=torch.int64, device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(planned, src=0)
        return int(planned)


def _better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def _to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device, non_blocking=True) for t in batch)


def fit(job: TrainingJob, cfg: TrainConfig, ctx: DistContext, backend: Backend,
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    """Train `job` under `backend`: resume, plan, then per epoch train, validate, re-plan, keep the best, snapshot,
    log and save the resume state, until the planned steps are done or validation stops improving. `on_epoch` sees
    each epoch's record (it may raise to end the run, as a pruner does)."""
    run = _Run(job, cfg, ctx, backend)
    try:
        for epoch in range(run.state["epoch"], run.epochs):
            if run.done():
                break
            metrics = run.validate(epoch, *run.train_one_epoch(epoch))
            run.plan(run.state["elapsed"])
            weights = run.keep_best(metrics)  # collective: every rank gathers the weights
            run.snapshot(epoch, weights)
            if run.finish_epoch(epoch, metrics, weights):
                break
            if on_epoch is not None:
                on_epoch(run.state["history"][-1])
    finally:
        run.progress.close()
    return run.result()


class _Run:
    """One fit's state and its steps; `state` is what the resume files carry."""

    def __init__(self, job: TrainingJob, cfg: TrainConfig, ctx: DistContext, backend: Backend) -> None:
        self.job, self.cfg, self.ctx, self.backend = job, cfg, ctx, backend
        self.out = Path(cfg.out)
        self.per_rank = backend.optimizer_state_per_rank
        resumed = load_resume_state(self.out, cfg, ctx, self.per_rank) if cfg.resume else None
        if resumed is not None:
            job.model.load_state_dict(resumed.model)
        batch_size = cfg.batch_size or job.batch_size
        optimizer = optimizer_spec(job, cfg)
        self.peak_lr = optimizer.kwargs["lr"]
        self.model = backend.wrap(job.model, optimizer, batch_size)
        if resumed is not None:
            backend.load_optimizer_state_dict(resumed.optimizer)
        dp_rank, self.dp_size = backend.data_parallel  # tensor-parallel peers must see the same batches
        self.sampler, self.loader = self._batches(batch_size, dp_rank)

        steps_per_epoch = max(1, len(self.loader) // cfg.grad_accum)
        self.total_steps = cfg.max_steps or (cfg.epochs or job.epochs) * steps_per_epoch
        self.epochs = math.ceil(self.total_steps / steps_per_epoch)
        self.warmup = (cfg.warmup_steps if cfg.warmup_steps is not None
                       else min(job.warmup_steps, self.total_steps // 10))
        self.budget = TimeBudget(cfg.time_limit, self.total_steps)

        self.state = resumed.trainer if resumed is not None else {
            "epoch": 0, "step": 0, "best": None, "bad_epochs": 0, "best_metrics": {}, "history": [],
            "train_seconds": 0.0, "elapsed": 0.0}
        self.state.setdefault("elapsed", self.state["train_seconds"])  # state saved before time limits existed
        self.clock_start = time.perf_counter() - self.state["elapsed"]  # the whole fit's wall time, earlier runs too
        self.best_state = resumed.best_model if resumed is not None and ctx.is_main else None
        if resumed is not None:
            set_rng_state(resumed.rng)
            if ctx.is_main:  # the log restarts from what the saved state had seen; later epochs are re-run
                (self.out / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in self.state["history"]))
        self.progress = tqdm(total=self.total_steps, initial=self.state["step"], desc=f"train {cfg.task}",
                             unit="step", disable=not ctx.is_main, dynamic_ncols=True,
                             mininterval=0.5 if sys.stderr.isatty() else 15.0)  # logs: a line every 15 s
        if self.state["step"]:  # resumed: plan from the time already spent
            self.plan(self.state["elapsed"])
        self.samples, self.loop_seconds, self.stopped_early = 0, 0.0, False

    def _batches(self, batch_size: int, dp_rank: int) -> tuple[Any, DataLoader]:
        job, cfg = self.job, self.cfg
        if job.lengths is not None:
            sampler = BucketBatchSampler(job.lengths, batch_size, dp_rank, self.dp_size, seed=cfg.seed)
            return sampler, DataLoader(job.train_set, batch_sampler=sampler, collate_fn=job.collate)
        sampler = DistributedSampler(job.train_set, num_replicas=self.dp_size, rank=dp_rank, shuffle=True,
                                     seed=cfg.seed, drop_last=True)
        # drop_last keeps every rank at the same number of steps, which sharded strategies require.
        return sampler, DataLoader(job.train_set, batch_size=batch_size, sampler=sampler, drop_last=True,
                                   collate_fn=job.collate)

    def plan(self, elapsed: float) -> None:
        """The one place --time-limit re-plans the run's total steps (see TimeBudget)."""
        if self.cfg.time_limit:
            self.total_steps = self.budget.plan(self.state["step"], elapsed, self.ctx.device)
            self.progress.total = self.total_steps

    def done(self) -> bool:
        return self.state["step"] >= self.total_steps

    def train_one_epoch(self, epoch: int) -> tuple[float, float | None, float]:
        """(mean training loss across ranks, the last step's gradient norm, when the epoch started)."""
        job, cfg, backend, state = self.job, self.cfg, self.backend, self.state
        self.model.train()
        self.sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        # Summed on the device: reading a loss back every step would stall a GPU on each micro-batch.
        loss_sum, loss_count = torch.zeros((), dtype=torch.float64, device=self.ctx.device), 0
        micro, grad_norm = 0, None
        scales = job.lr_scales(epoch) if job.lr_scales is not None else None
        for batch in self.loader:
            if self.done():
                break
            batch = _to_device(batch, self.ctx.device)
            micro += 1
            boundary = micro % cfg.grad_accum == 0
            with backend.no_sync() if not boundary else contextlib.nullcontext():
                loss = backend.forward_backward(job.loss, batch, 1.0 / cfg.grad_accum, job.pipeline)
            loss_sum += loss.double()
            loss_count += 1
            self.samples += len(batch[0]) * self.dp_size
            if not boundary:
                continue
            for group in backend.param_groups:
                scale = scales[group.get("group_index", 0)] if scales is not None else 1.0
                factor = lr_factor(state["step"], self.warmup, self.total_steps, job.lr_floor)
                group["lr"] = self.peak_lr * factor * scale
            grad_norm = backend.step()
            state["step"] += 1
            self.progress.update(1)
            if state["step"] == TimeBudget.FIRST_PLAN_STEP:
                self.plan(time.perf_counter() - self.clock_start)
            if self.ctx.is_main and state["step"] % 25 == 0:
                self.progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self._lr():.2e}",
                                          refresh=False)  # redraws follow mininterval, not every update
        loop_seconds = time.perf_counter() - epoch_start
        state["train_seconds"] += loop_seconds
        self.loop_seconds += loop_seconds
        return _mean_across_ranks(loss_sum, loss_count), grad_norm, epoch_start

    def _lr(self) -> float:
        return max(group["lr"] for group in self.backend.param_groups)

    def validate(self, epoch: int, train_loss: float, grad_norm: float | None, epoch_start: float) -> dict[str, Any]:
        """The job's validation metrics; the epoch's record (with them) goes into the history."""
        self.model.eval()
        with torch.no_grad(), self.backend.autocast():
            metrics = self.job.validate(self.backend.eval_model())
        record = {"epoch": epoch + 1, "step": self.state["step"], "train_loss": train_loss, "lr": self._lr(),
                  "grad_norm": grad_norm, **metrics, "epoch_seconds": round(time.perf_counter() - epoch_start, 3)}
        self.state["history"].append(record)
        self.state["elapsed"] = time.perf_counter() - self.clock_start
        return metrics

    def keep_best(self, metrics: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The weights now (every rank); rank 0 keeps a copy when the monitored metric improved."""
        # Gathered after validation: gathered before it, FSDP2's next forward failed here (a KeyError in its
        # parameter state, torch 2.14 on gloo).
        weights = self.backend.model_state_dict()
        if _better(metrics[self.job.monitor], self.state["best"], self.job.mode):
            self.state.update(best=metrics[self.job.monitor], bad_epochs=0, best_metrics=metrics)
            if self.ctx.is_main:  # a snapshot: on the CPU a state dict may alias the live parameters
                self.best_state = {name: tensor.clone() for name, tensor in weights.items()}
        else:
            self.state["bad_epochs"] += 1
        return weights

    def snapshot(self, epoch: int, weights: dict[str, torch.Tensor]) -> None:
        if self.job.snapshot_epochs and self.ctx.is_main:
            (self.out / EPOCHS_DIR).mkdir(exist_ok=True)
            save_weights(self.out / EPOCHS_DIR / f"epoch-{epoch + 1}.safetensors", weights)

    def finish_epoch(self, epoch: int, metrics: dict[str, Any], weights: dict[str, torch.Tensor]) -> bool:
        """Log the epoch, save the resume state; whether validation stopped improving for --early-stop-patience."""
        state, record = self.state, self.state["history"][-1]
        state["epoch"] = epoch + 1
        patience = self.cfg.early_stop_patience
        self.stopped_early = patience is not None and state["bad_epochs"] >= patience
        if self.ctx.is_main:
            with open(self.out / LOG_FILE, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            self.progress.write(f"epoch {epoch + 1}/{self.epochs}  train_loss {record['train_loss']:.4f}  " +
                                "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        save_resume_state(self.out, self.cfg, self.ctx, ResumeState(
            model=weights, best_model=self.best_state, optimizer=self.backend.optimizer_state_dict(),
            rng=rng_state(self.ctx), trainer=state, optimizer_per_rank=self.per_rank))
        if self.stopped_early and self.ctx.is_main:
            self.progress.write(f"early stop: {self.job.monitor} did not improve for {patience} epochs")
        return self.stopped_early

    def result(self) -> FitResult:
        state = self.state
        return FitResult(best_state=self.best_state, best_metrics=state["best_metrics"], epochs_run=state["epoch"],
                         steps=state["step"], train_seconds=state["train_seconds"],
                         samples_per_second=self.samples / max(self.loop_seconds, 1e-9),
                         stopped_early=self.stopped_early, history=state["history"])


def _mean_across_ranks(total: torch.Tensor, count: int) -> float:
    pair = torch.stack([total, torch.tensor(float(count), dtype=torch.float64, device=total.device)])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(pair)
    return float(pair[0] / max(pair[1], 1.0))
