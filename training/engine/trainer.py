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
    out = Path(cfg.out)
    per_rank = backend.optimizer_state_per_rank
    resume = load_resume_state(out, cfg, ctx, per_rank) if cfg.resume else None
    if resume is not None:
        job.model.load_state_dict(resume.model)
    batch_size = cfg.batch_size or job.batch_size
    optimizer = optimizer_spec(job, cfg)
    lr = optimizer.kwargs["lr"]
    model = backend.wrap(job.model, optimizer, batch_size)
    if resume is not None:
        backend.load_optimizer_state_dict(resume.optimizer)

    dp_rank, dp_size = backend.data_parallel  # tensor-parallel peers must see the same batches
    if job.lengths is not None:
        sampler = BucketBatchSampler(job.lengths, batch_size, dp_rank, dp_size, seed=cfg.seed)
        loader = DataLoader(job.train_set, batch_sampler=sampler, collate_fn=job.collate)
    else:
        sampler = DistributedSampler(job.train_set, num_replicas=dp_size, rank=dp_rank, shuffle=True,
                                     seed=cfg.seed, drop_last=True)
        # drop_last keeps every rank at the same number of steps, which sharded strategies require.
        loader = DataLoader(job.train_set, batch_size=batch_size, sampler=sampler, drop_last=True,
                            collate_fn=job.collate)
    steps_per_epoch = max(1, len(loader) // cfg.grad_accum)
    epochs = cfg.epochs or job.epochs
    total_steps = cfg.max_steps or epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(job.warmup_steps, total_steps // 10)

    state = resume.trainer if resume is not None else {"epoch": 0, "step": 0, "best": None, "bad_epochs": 0,
                                                          "best_metrics": {}, "history": [], "train_seconds": 0.0,
                                                          "elapsed": 0.0}
    budget = TimeBudget(cfg.time_limit, total_steps)
    state.setdefault("elapsed", state["train_seconds"])  # state saved before time limits existed
    clock_start = time.perf_counter() - state["elapsed"]  # wall time of the whole fit, earlier runs included
    if cfg.time_limit and state["step"]:  # resumed: plan from the time already spent
        total_steps = budget.plan(state["step"], state["elapsed"], ctx.device)
    if resume is not None:
        set_rng_state(resume.rng)
        if ctx.is_main:  # the log restarts from what the saved state had seen; later epochs are re-run
            log_text = "".join(json.dumps(record) + "\n" for record in state["history"])
            (out / "train_log.jsonl").write_text(log_text)
    best_state = resume.best_model if resume is not None and ctx.is_main else None
    log_path = out / "train_log.jsonl"
    progress = tqdm(total=total_steps, initial=state["step"], desc=f"train {cfg.task}", unit="step",
                    disable=not ctx.is_main, dynamic_ncols=True,
                    mininterval=0.5 if sys.stderr.isatty() else 15.0)  # logs get a line every 15 s, not every step
    samples_this_run, loop_seconds_this_run = 0, 0.0
    stopped_early = False

    for epoch in range(state["epoch"], epochs):
        if state["step"] >= total_steps:
            break
        model.train()
        sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        # Summed on the device: reading a loss back every step would stall a GPU on each micro-batch.
        loss_sum, loss_count = torch.zeros((), dtype=torch.float64, device=ctx.device), 0
        micro, grad_norm = 0, None
        scales = job.lr_scales(epoch) if job.lr_scales is not None else None
        for batch in loader:
            if state["step"] >= total_steps:
                break
            batch = _to_device(batch, ctx.device)
            micro += 1
            boundary = micro % cfg.grad_accum == 0
            with backend.no_sync() if not boundary else contextlib.nullcontext():
                loss = backend.forward_backward(job.loss, batch, 1.0 / cfg.grad_accum, job.pipeline)
            loss_sum += loss.double()
            loss_count += 1
            samples_this_run += len(batch[0]) * dp_size
            if not boundary:
                continue
            for group in backend.param_groups:
                scale = scales[group.get("group_index", 0)] if scales is not None else 1.0
                group["lr"] = lr * lr_factor(state["step"], warmup, total_steps, job.lr_floor) * scale
            grad_norm = backend.step()
            state["step"] += 1
            progress.update(1)
            if cfg.time_limit and state["step"] == TimeBudget.FIRST_PLAN_STEP:
                total_steps = budget.plan(state["step"], time.perf_counter() - clock_start, ctx.device)
                progress.total = total_steps
            if ctx.is_main and state["step"] % 25 == 0:
                progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{max(g['lr'] for g in backend.param_groups):.2e}",
                                     refresh=False)  # redraws follow mininterval, not every update
        loop_seconds = time.perf_counter() - epoch_start
        state["train_seconds"] += loop_seconds
        loop_seconds_this_run += loop_seconds

        train_loss = _mean_across_ranks(loss_sum, loss_count)
        model.eval()
        with torch.no_grad(), backend.autocast():
            metrics = job.validate(backend.eval_model())
        record = {"epoch": epoch + 1, "step": state["step"], "train_loss": train_loss,
                  "lr": max(g["lr"] for g in backend.param_groups), "grad_norm": grad_norm, **metrics,
                  "epoch_seconds": round(time.perf_counter() - epoch_start, 3)}
        state["history"].append(record)
        state["elapsed"] = time.perf_counter() - clock_start
        if cfg.time_limit:
            total_steps = budget.plan(state["step"], state["elapsed"], ctx.device)
            progress.total = total_steps
        # Gathered after validation: gathered before it, FSDP2's next forward failed here (a KeyError in its
        # parameter state, torch 2.14 on gloo).
        weights = backend.model_state_dict()  # collective: every rank calls it
        if _better(metrics[job.monitor], state["best"], job.mode):
            state.update(best=metrics[job.monitor], bad_epochs=0, best_metrics=metrics)
            if ctx.is_main:  # a snapshot: on the CPU a state dict may alias the live parameters
                best_state = {name: tensor.clone() for name, tensor in weights.items()}
        else:
            state["bad_epochs"] += 1
        if job.snapshot_epochs and ctx.is_main:
            (out / EPOCHS_DIR).mkdir(exist_ok=True)
            save_weights(out / EPOCHS_DIR / f"epoch-{epoch + 1}.safetensors", weights)
        state["epoch"] = epoch + 1
        patience = cfg.early_stop_patience
        stopped_early = patience is not None and state["bad_epochs"] >= patience
        if ctx.is_main:
            with open(log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            progress.write(f"epoch {epoch + 1}/{epochs}  train_loss {train_loss:.4f}  " +
                           "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        save_resume_state(out, cfg, ctx, ResumeState(model=weights, best_model=best_state,
                                                     optimizer=backend.optimizer_state_dict(),
                                                     rng=rng_state(ctx), trainer=state, optimizer_per_rank=per_rank))
        if stopped_early:
            if ctx.is_main:
                progress.write(f"early stop: {job.monitor} did not improve for {patience} epochs")
            break
        if on_epoch is not None:
            try:
                on_epoch(record)
            except BaseException:  # a pruned trial ends here: leave the terminal tidy
                progress.close()
                raise
    progress.close()
    return FitResult(best_state=best_state, best_metrics=state["best_metrics"], epochs_run=state["epoch"],
                     steps=state["step"], train_seconds=state["train_seconds"],
                     samples_per_second=samples_this_run / max(loop_seconds_this_run, 1e-9),
                     stopped_early=stopped_early, history=state["history"])


def _mean_across_ranks(total: torch.Tensor, count: int) -> float:
    pair = torch.stack([total, torch.tensor(float(count), dtype=torch.float64, device=total.device)])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(pair)
    return float(pair[0] / max(pair[1], 1.0))
