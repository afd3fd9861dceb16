"""FairScale: OSS optimizer-state sharding + ShardedDataParallel (+ ShardedGradScaler for fp16), FSDP, Pipe."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch
from torch import nn

from training.config import TrainConfig
from training.engine.backends.base import Backend, OptimizerSpec, StrategyUnavailable, unwrap_state_dict


class FairScaleBackend(Backend):
    name: ClassVar[str] = "fairscale"
    strategies: ClassVar[tuple[str, ...]] = ("oss", "fsdp", "pipe")

    @classmethod
    def check(cls, strategy: str, cfg: TrainConfig, device: str) -> None:
        super().check(strategy, cfg, device)
        if strategy == "fsdp" and device != "cuda":
            raise StrategyUnavailable("fairscale fsdp allocates CUDA streams and needs a GPU; on the CPU use "
                                      "--backend fairscale --strategy oss or --backend torch --strategy fsdp")
        if strategy == "pipe":
            raise StrategyUnavailable(f"fairscale pipe needs the model as an nn.Sequential of stages; the {cfg.task} "
                                      f"recipe does not provide one yet. Use --strategy oss")

    def checkpoint_block(self, block: nn.Module) -> nn.Module:
        from fairscale.nn import checkpoint_wrapper

        return checkpoint_wrapper(block)

    def wrap(self, model: nn.Module, optimizer: OptimizerSpec) -> nn.Module:
        from fairscale.optim import OSS

        model.to(self.ctx.device)
        if self.cfg.checkpointing:
            self.apply_checkpointing(model)
        if self.strategy == "oss":
            from fairscale.nn.data_parallel import ShardedDataParallel
            from fairscale.optim.grad_scaler import ShardedGradScaler

            # OSS builds one optimizer per rank over that rank's parameter shard.
            self.optimizer = OSS(model.parameters(), optim=optimizer.cls, **optimizer.kwargs)
            self.model = ShardedDataParallel(model, self.optimizer)
            self.scaler = ShardedGradScaler(enabled=self.cfg.precision == "fp16")
        else:
            from fairscale.nn.data_parallel import FullyShardedDataParallel

            self.model = FullyShardedDataParallel(model, mixed_precision=self.cfg.precision == "fp16")
            self.optimizer = optimizer.build(self.model.parameters())
            self.scaler = torch.amp.GradScaler("cuda", enabled=self.cfg.precision == "fp16")
        return self.model

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self.model.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> float | None:
        self.scaler.unscale_(self.optimizer)
        norm = (self.optimizer.clip_grad_norm(self.cfg.max_grad_norm) if self.strategy == "oss"
                else self.model.clip_grad_norm_(self.cfg.max_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        return float(norm)

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        if self.strategy == "oss":
            return unwrap_state_dict(self.model.module)
        return {k: v.float().cpu() for k, v in self.model.state_dict().items()}  # FSDP gathers full params

    def optimizer_state_dict(self) -> dict[str, Any]:
        if self.strategy == "oss":
            self.optimizer.consolidate_state_dict(recipient_rank=0)
            return self.optimizer.state_dict() if self.ctx.is_main else {}
        return self.model.gather_full_optim_state_dict(self.optimizer) or {}

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        if self.strategy == "oss":
            self.optimizer.load_state_dict(state)
        else:
            self.optimizer.load_state_dict(self.model.get_shard_from_optim_state_dict(state))
