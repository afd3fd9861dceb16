"""Resumable training state under OUT/state, written at the end of every epoch.

Layout: state/epoch-K/{model,best_model}.safetensors, optimizer.pt (full optimizer state, read back with
torch.load(weights_only=True); optimizer-rank{R}.pt per rank where ranks hold different parameter shards, as under
tensor parallelism), rng-rank{R}.safetensors, trainer.json; state/latest.json names the newest complete
epoch directory with the sha256 of each file and is replaced atomically last, so a run killed at any moment resumes
from the last complete epoch.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from training.checkpoint import save_weights, sha256_file, write_json_atomic
from training.config import TrainConfig
from training.engine.distributed import DistContext

# A run resumes only under the settings that shaped its optimizer state and data order.
_MUST_MATCH = ("task", "backend", "strategy", "tp", "pp", "seed", "grad_accum", "batch_size", "optimizer",
               "task_options")


@dataclass
class ResumeState:
    model: dict[str, torch.Tensor]
    best_model: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]  # "cpu", and "cuda" where dropout draws from the GPU generator
    trainer: dict[str, Any]
    optimizer_per_rank: bool = False  # `optimizer` is this rank's own shard state, not the full state


class ResumeError(RuntimeError):
    pass


def _identity(cfg: TrainConfig, ctx: DistContext) -> dict[str, Any]:
    return {**{k: getattr(cfg, k) for k in _MUST_MATCH}, "world_size": ctx.world_size}


def save_resume_state(out: Path, cfg: TrainConfig, ctx: DistContext, state: ResumeState) -> None:
    root = out / "state"
    epoch_dir = root / f"epoch-{state.trainer['epoch']}"
    if ctx.is_main:
        shutil.rmtree(epoch_dir, ignore_errors=True)
        epoch_dir.mkdir(parents=True)
    _barrier()
    epoch_dir.mkdir(parents=True, exist_ok=True)  # other machines see it only through a shared filesystem
    save_file(state.rng, str(epoch_dir / f"rng-rank{ctx.rank}.safetensors"))
    if state.optimizer_per_rank:
        torch.save(state.optimizer, epoch_dir / f"optimizer-rank{ctx.rank}.pt")
    if ctx.is_main:
        save_weights(epoch_dir / "model.safetensors", state.model)
        if state.best_model is not None:
            save_weights(epoch_dir / "best_model.safetensors", state.best_model)
        if not state.optimizer_per_rank:
            torch.save(state.optimizer, epoch_dir / "optimizer.pt")
        (epoch_dir / "trainer.json").write_text(json.dumps(state.trainer))
    _barrier()
    if ctx.is_main:
        files = {p.name: sha256_file(p) for p in sorted(epoch_dir.iterdir())}
        write_json_atomic(root / "latest.json", {"dir": epoch_dir.name, "identity": _identity(cfg, ctx),
                                                 "files": files})
        for old in root.glob("epoch-*"):
            if old != epoch_dir:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()


def load_resume_state(out: Path, cfg: TrainConfig, ctx: DistContext,
                      optimizer_per_rank: bool = False) -> ResumeState | None:
    latest = out / "state" / "latest.json"
    if not latest.is_file():
        return None
    index = json.loads(latest.read_text())
    expected = _identity(cfg, ctx)
    diffs = [f"{k}={index['identity'].get(k)!r} (now {v!r})" for k, v in expected.items()
             if index["identity"].get(k) != v]
    if diffs:
        raise ResumeError(f"{latest}: cannot resume, the saved run differs in " + ", ".join(diffs))
    epoch_dir = latest.parent / index["dir"]
    for name, digest in index["files"].items():
        if sha256_file(epoch_dir / name) != digest:
            raise ResumeError(f"{epoch_dir / name}: sha256 does not match {latest}; the resume state is damaged")
    best = epoch_dir / "best_model.safetensors"
    optimizer_file = f"optimizer-rank{ctx.rank}.pt" if optimizer_per_rank else "optimizer.pt"
    return ResumeState(
        model=load_file(str(epoch_dir / "model.safetensors")),
        best_model=load_file(str(best)) if best.is_file() else None,
        optimizer=torch.load(epoch_dir / optimizer_file, weights_only=True),
        rng=load_file(str(epoch_dir / f"rng-rank{ctx.rank}.safetensors")),
        trainer=json.loads((epoch_dir / "trainer.json").read_text()),
        optimizer_per_rank=optimizer_per_rank,
    )


def rng_state(ctx: DistContext) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(ctx.device).cpu()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
