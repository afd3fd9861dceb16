"""Plain PyTorch: DistributedDataParallel, or FSDP2 (`fully_shard`) sharding each block and then the root."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.engine.backends.base import (
    Backend,
    OptimizerSpec,
    full_model_state,
    full_optimizer_state,
    load_full_optimizer_state,
    model_blocks,
    unwrap_state_dict,
)


class TorchBackend(Backend):
    name: ClassVar[str] = "torch"
    strategies: ClassVar[tuple[str, ...]] = ("ddp", "fsdp")
    flattening: ClassVar[tuple[str, ...]] = ("fsdp",)

    def wrap(self, model: nn.Module, optimizer: OptimizerSpec, batch_size: int) -> nn.Module:
        self.place(model)
        if self.cfg.checkpointing:
            self.apply_checkpointing(model)
        if self.strategy == "ddp":
            device_ids = [self.ctx.local_rank] if self.ctx.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=device_ids)
        else:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            policy = MixedPrecisionPolicy(param_dtype=self.dtype, reduce_dtype=torch.float32)
            if self.dtype != torch.float32:
                # BatchNorm keeps fp32 weights beside its fp32 running statistics (the CPU kernel refuses a bf16
                # weight with fp32 statistics); autocast still runs the convolutions around it in low precision.
                norm_policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
                for norm in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
                    fully_shard(norm, mp_policy=norm_policy)
            for block in model_blocks(model) or []:
                fully_shard(block, mp_policy=policy)
            self.model = fully_shard(model, mp_policy=policy)
        self.optimizer = optimizer.build(self.model)
        enabled = self.cfg.precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.ctx.device.type, enabled=enabled)
        return self.model

    def no_sync(self) -> contextlib.AbstractContextManager:
        if self.strategy == "ddp":
            return self.model.no_sync()
        return _fsdp_no_sync(self.model)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> float | None:
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return float(norm)

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        if self.strategy == "ddp":
            return unwrap_state_dict(self.model.module)
        return full_model_state(self.model)

    def optimizer_state_dict(self) -> dict[str, Any]:
        if self.strategy == "ddp":
            return self.optimizer.state_dict()
        return full_optimizer_state(self.model, self.optimizer)

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        if self.strategy == "ddp":
            self.optimizer.load_state_dict(state)
        else:
            load_full_optimizer_state(self.model, self.optimizer, state)


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
