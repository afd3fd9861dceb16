"""FairScale: OSS optimizer-state sharding + ShardedDataParallel (+ ShardedGradScaler for fp16), FSDP, Pipe, and
Megatron-style tensor parallelism (fairscale.nn.model_parallel, planned per model: training.engine.tensor_parallel)."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch
from torch import nn

from training.config import TrainConfig
from training.engine.backends.base import Backend, OptimizerSpec, StrategyUnavailable, cpu_fp32, unwrap_state_dict


class FairScaleBackend(Backend):
    name: ClassVar[str] = "fairscale"
    strategies: ClassVar[tuple[str, ...]] = ("oss", "fsdp", "pipe", "tp")
    model_parallel: ClassVar[dict[str, tuple[str, ...]]] = {"tp": ("tp",)}
    flattening: ClassVar[tuple[str, ...]] = ("oss", "fsdp")
    fp32_only: ClassVar[dict[str, str]] = {"pipe": "runs its stages in worker threads, where autocast does not reach"}

    def __init__(self, strategy: str, ctx, cfg: TrainConfig) -> None:
        super().__init__(strategy, ctx, cfg)
        self.optimizer_state_per_rank = strategy == "tp"  # each rank's optimizer holds its own slices' state

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
        if strategy == "tp":
            world = cfg.nproc * cfg.nnodes
            if cfg.tp < 2 or world % cfg.tp:
                raise StrategyUnavailable(f"fairscale tp needs --tp 2 or more dividing the process count ({world}); "
                                          f"e.g. --tp 2 --nproc 2")
            if not hf_model:
                raise StrategyUnavailable(f"fairscale tp splits a transformer's projections; the {cfg.task} model "
                                          f"has none to split. Use oss or ddp for it")
            if cfg.precision == "fp16":
                raise StrategyUnavailable("fairscale tp has no loss scaling across its ranks (an overflow on one "
                                          "rank's slice would skip the step there only); use --precision bf16")

    def checkpoint_block(self, block: nn.Module) -> nn.Module:
        from fairscale.nn import checkpoint_wrapper

        return checkpoint_wrapper(block)

    def wrap(self, model: nn.Module, optimizer: OptimizerSpec, batch_size: int) -> nn.Module:
        from fairscale.optim import OSS

        if self.strategy == "tp":
            return self._wrap_tensor_parallel(model, optimizer)
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

    def _wrap_tensor_parallel(self, model: nn.Module, optimizer: OptimizerSpec) -> nn.Module:
        from fairscale.nn.model_parallel import initialize as mpu

        from training.engine.tensor_parallel import plan_of

        plan = plan_of(model)
        if plan is None:
            raise StrategyUnavailable(f"fairscale tp has a plan for GPT-2 only (without LoRA), not "
                                      f"{type(model).__name__}; use colossalai hybrid --tp for other transformers")
        if mpu.model_parallel_is_initialized():  # an earlier run in this process: its groups are gone
            mpu.destroy_model_parallel()
        mpu.initialize_model_parallel(self.cfg.tp)
        self.tp_group = mpu.get_model_parallel_group()
        self.sliced = plan(model, mpu.get_model_parallel_rank(), self.cfg.tp)
        self.place(model)
        if self.cfg.checkpointing:
            self.apply_checkpointing(model)
        self.module = model
        self.optimizer = optimizer.build(model)
        self.scaler = torch.amp.GradScaler(self.ctx.device.type, enabled=False)
        if mpu.get_data_parallel_world_size() > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(model, process_group=mpu.get_data_parallel_group())
        else:
            self.model = model
        return self.model

    @property
    def data_parallel(self) -> tuple[int, int]:
        if self.strategy != "tp":
            return super().data_parallel
        from fairscale.nn.model_parallel import initialize as mpu

        return mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size()

    def no_sync(self) -> contextlib.AbstractContextManager:
        if self.strategy == "pipe" or self.strategy == "tp" and self.model is self.module:
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _clip_tensor_parallel(self) -> torch.Tensor:
        """The whole model's gradient norm: each slice's squares summed across the tensor-parallel ranks, the
        replicated parameters' (equal on every rank) counted once; then every gradient scaled by the same factor."""
        import torch.distributed as dist

        sliced = {id(s.param) for s in self.sliced}
        params = [p for p in self.module.parameters() if p.grad is not None]
        squares = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)
        for param in params:
            squares[0 if id(param) in sliced else 1] += param.grad.double().pow(2).sum()
        dist.all_reduce(squares[:1], group=self.tp_group)
        norm = squares.sum().sqrt().float()
        torch.nn.utils.clip_grads_with_norm_(params, self.cfg.max_grad_norm, norm)
        return norm

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> float | None:
        self.scaler.unscale_(self.optimizer)
        if self.strategy == "oss":
            norm = self.optimizer.clip_grad_norm(self.cfg.max_grad_norm)
        elif self.strategy == "pipe":
            self.model.gather_tied_gradients()
            norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.max_grad_norm)
        elif self.strategy == "tp":
            norm = self._clip_tensor_parallel()
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
        if self.strategy == "tp":
            return self._joined_state()
        if self.strategy == "oss":
            return unwrap_state_dict(self.model.module)
        return {k: v.float().cpu() for k, v in self.model.state_dict().items()}  # FSDP gathers full params

    def _joined_state(self) -> dict[str, torch.Tensor]:
        """The model's own state dict: every sliced parameter gathered from the ranks and joined (collective)."""
        import torch.distributed as dist

        state = unwrap_state_dict(self.module)
        gathered: dict[int, list[torch.Tensor]] = {}  # a tied parameter (embedding and head) crosses the wire once
        for s in self.sliced:
            if id(s.param) not in gathered:
                slices = [torch.empty_like(s.param) for _ in range(self.cfg.tp)]
                dist.all_gather(slices, s.param.detach().contiguous(), group=self.tp_group)
                gathered[id(s.param)] = [cpu_fp32(t) for t in slices]
            state[s.name] = s.join(gathered[id(s.param)])
        return state

    def optimizer_state_dict(self) -> dict[str, Any]:
        if self.strategy in ("pipe", "tp"):
            return self.optimizer.state_dict()
        if self.strategy == "oss":
            self.optimizer.consolidate_state_dict(recipient_rank=0)
            return self.optimizer.state_dict() if self.ctx.is_main else {}
        if self.ctx.world_size == 1:  # nothing is sharded, and fairscale's gather expects padded shards
            return self.optimizer.state_dict()
        return self.model.gather_full_optim_state_dict(self.optimizer) or {}

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        if self.strategy in ("oss", "pipe", "tp") or self.ctx.world_size == 1:
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
