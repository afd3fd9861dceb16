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
    flattening: ClassVar[tuple[str, ...]] = ("oss", "fsdp")

    @classmethod
    def check(cls, strategy: str, cfg: TrainConfig, device: str, hf_model: bool = False) -> None:
        super().check(strategy, cfg, device, hf_model)
        if strategy == "fsdp" and device != "cuda":
            raise StrategyUnavailable("fairscale fsdp allocates CUDA streams and needs a GPU; on the CPU use "
                                      "--backend fairscale --strategy oss or --backend torch --strategy fsdp")
        if strategy == "pipe":
            if cfg.nproc * cfg.nnodes > 1:
                raise StrategyUnavailable("fairscale pipe is single-process pipeline parallelism across this "
                                          "machine's GPUs (or two CPU stages); run it with --nproc 1")
            if cfg.precision != "fp32":
                raise StrategyUnavailable("fairscale pipe runs its stages in worker threads, where autocast does not "
                                          "reach; use --precision fp32 with it")

    def checkpoint_block(self, block: nn.Module) -> nn.Module:
        from fairscale.nn import checkpoint_wrapper

        return checkpoint_wrapper(block)

    def wrap(self, model: nn.Module, optimizer: OptimizerSpec, batch_size: int) -> nn.Module:
        from fairscale.optim import OSS

        self.place(model)
        if self.cfg.checkpointing and self.strategy != "pipe":  # Pipe checkpoints its own micro-batches
            self.apply_checkpointing(model)
        if self.strategy == "oss":
            from fairscale.nn.data_parallel import ShardedDataParallel
            from fairscale.optim.grad_scaler import ShardedGradScaler

            # OSS builds one optimizer per rank over that rank's parameter shard.
            self.optimizer = OSS(optimizer.param_groups(model), optim=optimizer.cls, **optimizer.kwargs)
            self.model = ShardedDataParallel(model, self.optimizer)
            self.scaler = ShardedGradScaler(enabled=self.cfg.precision == "fp16")
        elif self.strategy == "pipe":
            self.module = model  # keeps the original parameter names for checkpoints
            self.model = _PipelinedModel(model, self.ctx.device, self.cfg.checkpointing)
            self.optimizer = optimizer.build(self.module)
            self.scaler = torch.amp.GradScaler(self.ctx.device.type, enabled=False)
        else:
            from fairscale.nn.data_parallel import FullyShardedDataParallel
            from fairscale.optim.grad_scaler import ShardedGradScaler

            mixed = self.cfg.precision == "fp16"
            # fairscale 0.4.13 casts fp16 gradients back to fp32 only after a reduce-scatter; with one process there
            # is none and the fp32 optimizer meets fp16 gradients. Reducing in fp32 casts them first.
            # Parameter groups need the parameters under their own names: flattening merges them.
            self.model = FullyShardedDataParallel(model, mixed_precision=mixed,
                                                  fp32_reduce_scatter=mixed and self.ctx.world_size == 1,
                                                  flatten_parameters=optimizer.group_of is None)
            self.optimizer = optimizer.build(self.model)
            # FSDP's fp16 mode reduces gradients in fp16; torch's GradScaler refuses to unscale those, fairscale's
            # sharded scaler takes them (and agrees on inf/nan across shards).
            self.scaler = ShardedGradScaler(enabled=self.cfg.precision == "fp16")
        return self.model

    def no_sync(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.strategy == "pipe" else self.model.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> float | None:
        self.scaler.unscale_(self.optimizer)
        if self.strategy == "oss":
            norm = self.optimizer.clip_grad_norm(self.cfg.max_grad_norm)
        elif self.strategy == "pipe":
            self.model.gather_tied_gradients()
            norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.max_grad_norm)
        else:
            norm = self.model.clip_grad_norm_(self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.strategy == "pipe":
            self.model.reset_tied_copies()
        return float(norm)

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        if self.strategy == "pipe":
            return unwrap_state_dict(self.module)
        if self.strategy == "oss":
            return unwrap_state_dict(self.model.module)
        return {k: v.float().cpu() for k, v in self.model.state_dict().items()}  # FSDP gathers full params

    def optimizer_state_dict(self) -> dict[str, Any]:
        if self.strategy == "pipe":
            return self.optimizer.state_dict()
        if self.strategy == "oss":
            self.optimizer.consolidate_state_dict(recipient_rank=0)
            return self.optimizer.state_dict() if self.ctx.is_main else {}
        if self.ctx.world_size == 1:  # nothing is sharded, and fairscale's gather expects padded shards
            return self.optimizer.state_dict()
        return self.model.gather_full_optim_state_dict(self.optimizer) or {}

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        if self.strategy in ("oss", "pipe") or self.ctx.world_size == 1:
            self.optimizer.load_state_dict(state)
        else:
            self.optimizer.load_state_dict(self.model.get_shard_from_optim_state_dict(state))


class _PipelinedModel(nn.Module):
    """fairscale Pipe over the model's chain of stages (training.engine.pipeline_chain): one partition per GPU, or
    two CPU partitions. Called with the model's own arguments, it answers what the model would, so recipes stay
    unaware of the split. Micro-batches (chunks) keep every stage busy; `--checkpointing` recomputes their
    activations.
    """

    CHUNKS = 4

    def __init__(self, model: nn.Module, device: torch.device, checkpointing: bool) -> None:
        from fairscale.nn import Pipe

        from training.engine.pipeline_chain import chain_of

        chain = chain_of(model)
        if chain is None:
            raise StrategyUnavailable(f"fairscale pipe needs a chain of single-tensor stages and "
                                      f"{type(model).__name__} is not one (GPT-2 and modelyard's sequential models "
                                      f"are); use oss, or colossalai hybrid --pp 2 for a transformer")
        super().__init__()
        self.chain = chain
        stages = chain.stages
        if device.type == "cuda":
            devices = [torch.device("cuda", i) for i in range(min(torch.cuda.device_count(), len(stages)))]
        else:
            devices = [torch.device("cpu")] * min(2, len(stages))
        balance = [len(part) for part in _split(list(range(len(stages))), len(devices))]
        self.first = devices[0]
        self.pipe = Pipe(stages, balance=balance, devices=devices, chunks=self.CHUNKS,
                         checkpoint="except_last" if checkpointing else "never")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        x = self.chain.first(*args, **kwargs)
        return self.chain.outputs(self.pipe(x.to(self.first)).to(x.device), *args, **kwargs)

    def gather_tied_gradients(self) -> None:
        """Each copy's gradient added to its parameter's: the gradient the one shared weight would have had."""
        for weight, copy in self.chain.tied:
            if copy.grad is not None:
                weight.grad = copy.grad.to(weight.device) if weight.grad is None else weight.grad + copy.grad.to(
                    weight.device)

    @torch.no_grad()
    def reset_tied_copies(self) -> None:
        for weight, copy in self.chain.tied:
            copy.copy_(weight)
            copy.grad = None


def _split(items: list, parts: int) -> list[list]:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out
