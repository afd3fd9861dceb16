"""Colossal-AI through its Booster: torch DDP, ZeRO-1/2 (LowLevelZero, optional CPU offload), Gemini (chunked
parameters on the GPU), PyTorch FSDP (TorchFSDPPlugin), and hybrid tensor/pipeline parallelism (HybridParallelPlugin:
shardformer splits a Hugging Face transformer's matrices across --tp ranks and its layers into --pp stages, trained
with the one-forward-one-backward schedule)."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from training.config import TrainConfig
from training.engine.backends.base import (
    Backend,
    OptimizerSpec,
    PipelineLoss,
    StrategyUnavailable,
    cpu_fp32,
    full_model_state,
    full_optimizer_state,
    load_full_optimizer_state,
    model_blocks,
    unwrap_state_dict,
)


class ColossalAIBackend(Backend):
    name: ClassVar[str] = "colossalai"
    strategies: ClassVar[tuple[str, ...]] = ("ddp", "zero1", "zero2", "gemini", "hybrid", "fsdp")
    flattening: ClassVar[tuple[str, ...]] = ("zero1", "zero2", "gemini", "hybrid", "fsdp")
    model_parallel: ClassVar[dict[str, tuple[str, ...]]] = {"hybrid": ("tp", "pp")}
    # Plugins that own mixed precision (they cast the model) and gradient clipping; the rest run under autocast.
    _PLUGIN_PRECISION = ("zero1", "zero2", "gemini", "hybrid")

    def __init__(self, strategy: str, ctx, cfg: TrainConfig) -> None:
        super().__init__(strategy, ctx, cfg)
        self.optimizer_state_per_rank = strategy == "hybrid"  # tensor-parallel ranks hold different shards
        self._updates = 0  # optimizer steps taken, so a pipeline gather is reused until the weights change
        self._gathered: tuple[int, dict[str, torch.Tensor]] | None = None

    @classmethod
    def check(cls, strategy: str, cfg: TrainConfig, device: str, hf_model: bool = False) -> None:
        super().check(strategy, cfg, device, hf_model)
        if strategy == "gemini" and device != "cuda":
            raise StrategyUnavailable("colossalai gemini keeps parameters in CUDA memory chunks and needs a GPU; "
                                      "on the CPU use --strategy zero2 (add --offload to keep optimizer state in RAM)")
        if strategy == "gemini" and cfg.optimizer == "sgd":
            raise StrategyUnavailable("colossalai gemini steps only its own Adam kernels (HybridAdam); use "
                                      "--optimizer adamw with it, or zero2 for SGD")
        if strategy == "gemini" and cfg.precision == "fp32":
            raise StrategyUnavailable("colossalai gemini trains in fp16 or bf16 (with fp32 master weights); "
                                      "pass --precision bf16 or --precision fp16")
        if strategy == "fsdp" and device != "cuda":
            raise StrategyUnavailable("colossalai fsdp (TorchFSDPPlugin) places the model on the current CUDA device "
                                      "and needs a GPU; on the CPU use --backend torch --strategy fsdp (FSDP2)")
        if strategy == "hybrid":
            cls._check_hybrid(cfg, hf_model)
        if cfg.offload and strategy not in ("zero2", "gemini"):
            raise StrategyUnavailable("--offload applies to colossalai zero2 and gemini only")

    @staticmethod
    def _check_hybrid(cfg: TrainConfig, hf_model: bool) -> None:
        if not hf_model:
            raise StrategyUnavailable(f"colossalai hybrid (tensor/pipeline parallel) needs a model with a shardformer "
                                      f"policy (Hugging Face transformers); the {cfg.task} model has none. "
                                      f"Use zero1/zero2 or ddp for it")
        if cfg.pp > 1 and cfg.batch_size:
            pipeline_microbatches(cfg.batch_size, cfg.pp)  # refuses a batch that does not split, before launch
        world = cfg.nproc * cfg.nnodes
        if world % (cfg.tp * cfg.pp):
            raise StrategyUnavailable(f"colossalai hybrid needs the process count ({world}) to be a multiple of "
                                      f"--tp x --pp ({cfg.tp * cfg.pp})")
        if cfg.checkpointing:
            raise StrategyUnavailable("--checkpointing is not available with colossalai hybrid; shardformer "
                                      "replaces the model's layers")

    def wrap(self, model: nn.Module, optimizer: OptimizerSpec, batch_size: int) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # import-time notices about optional CUDA kernels (apex, tensornvme)
            from colossalai.booster import Booster
            from colossalai.booster.plugin import (
                GeminiPlugin,
                HybridParallelPlugin,
                LowLevelZeroPlugin,
                TorchDDPPlugin,
                TorchFSDPPlugin,
            )
        from training.engine import colossalai_fixes

        colossalai_fixes.apply()
        on_cpu = self.ctx.device.type == "cpu"
        if on_cpu:
            from training.engine import colossalai_cpu_compat

            colossalai_cpu_compat.apply()
        self.place(model)
        if self.cfg.checkpointing:
            self.apply_checkpointing(model)
        precision = self.cfg.precision
        if self.strategy == "ddp":
            plugin = TorchDDPPlugin()
        elif self.strategy in ("zero1", "zero2"):
            # Overlapping gradient reduction with backward needs device streams; the CPU has none.
            plugin = LowLevelZeroPlugin(stage=1 if self.strategy == "zero1" else 2, precision=precision,
                                        max_norm=self.cfg.max_grad_norm, cpu_offload=self.cfg.offload,
                                        overlap_communication=not on_cpu)
        elif self.strategy == "hybrid":
            pipeline: dict[str, Any] = {}
            if self.cfg.pp > 1:
                # Validation runs the whole model on every rank: a copy to load the gathered stages into.
                self._full_model = copy.deepcopy(model)
                # Batches differ in padded length, so shapes are sent with every micro-batch (no metadata cache).
                pipeline = {"num_microbatches": pipeline_microbatches(batch_size, self.cfg.pp),
                            "enable_metadata_cache": False}
            # ZeRO stays off: the data-parallel replicas use plain DDP across tensor-parallel groups.
            plugin = HybridParallelPlugin(tp_size=self.cfg.tp, pp_size=self.cfg.pp, precision=precision,
                                          max_norm=self.cfg.max_grad_norm, zero_stage=0, **pipeline)
        elif self.strategy == "fsdp":
            from torch.distributed.fsdp.wrap import ModuleWrapPolicy

            blocks = model_blocks(model)
            policy = ModuleWrapPolicy({type(block) for block in blocks}) if blocks is not None else None
            plugin = TorchFSDPPlugin(auto_wrap_policy=policy)
            if optimizer.cls is torch.optim.AdamW:
                # The plugin re-runs the optimizer's __init__ with its own `defaults` over the FSDP parameters;
                # torch's AdamW rejects the `decoupled_weight_decay` key its defaults carry (torch>=2.6), Adam
                # takes it.
                optimizer = OptimizerSpec(torch.optim.Adam, {**optimizer.kwargs, "decoupled_weight_decay": True},
                                          optimizer.group_of)
        else:
            plugin = GeminiPlugin(precision=precision, max_norm=self.cfg.max_grad_norm,
                                  placement_policy="static", offload_optim_frac=1.0 if self.cfg.offload else 0.0)
            optimizer = self._gemini_optimizer(optimizer)
        self.booster = Booster(plugin=plugin)
        self.model, self.optimizer, *_ = self.booster.boost(model, optimizer.build(model))
        if self.strategy == "fsdp":
            # FSDP1 loss scaling must agree on inf/nan across shards; the plugin leaves precision to autocast.
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            self.scaler = ShardedGradScaler(enabled=precision == "fp16")
        return self.model

    @staticmethod
    def _gemini_optimizer(optimizer: OptimizerSpec) -> OptimizerSpec:
        """Gemini steps only Colossal-AI's own Adam kernels (HybridAdam: fused CUDA for chunks on the GPU, SIMD
        C++ for offloaded ones); adamw_mode keeps AdamW's decoupled weight decay."""
        from colossalai.nn.optimizer import HybridAdam

        kwargs = {k: v for k, v in optimizer.kwargs.items() if k in ("lr", "betas", "eps", "weight_decay")}
        return OptimizerSpec(HybridAdam, {**kwargs, "adamw_mode": True}, optimizer.group_of)

    @property
    def data_parallel(self) -> tuple[int, int]:
        if self.strategy != "hybrid":
            return super().data_parallel
        import torch.distributed as dist

        group = self.booster.plugin.dp_group
        return dist.get_rank(group), dist.get_world_size(group)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.strategy in self._PLUGIN_PRECISION:
            return contextlib.nullcontext()
        return super().autocast()

    def no_sync(self) -> contextlib.AbstractContextManager:
        if self.booster.plugin.support_no_sync():
            return self.booster.no_sync(self.model, self.optimizer)
        return contextlib.nullcontext()  # ZeRO-2 keeps reducing into its gradient shards; results are the same

    @property
    def _pipelined(self) -> bool:
        return self.strategy == "hybrid" and self.cfg.pp > 1

    def forward_backward(self, loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
                         batch: tuple[torch.Tensor, ...], scale: float,
                         pipeline: PipelineLoss | None = None) -> torch.Tensor:
        if not self._pipelined:
            return super().forward_backward(loss_fn, batch, scale, pipeline)
        if pipeline is None:
            raise StrategyUnavailable(f"the {self.cfg.task} task defines no pipeline loss; run it without --pp")
        plugin = self.booster.plugin
        result = self.booster.execute_pipeline(iter([pipeline.inputs(batch)]), self.model,
                                               lambda outputs, micro: pipeline.loss(outputs, micro) * scale,
                                               self.optimizer, return_loss=True)
        # The schedule returns the mean micro-batch loss on the last stage only; the sum over the pipeline group
        # gives every stage the same value to log.
        last = plugin.stage_manager.is_last_stage()
        loss = result["loss"].detach().float() / scale if last else torch.zeros((), device=self.ctx.device)
        dist.all_reduce(loss, group=plugin.pp_group)
        return loss

    def eval_model(self) -> nn.Module:
        if not self._pipelined:
            return self.model
        self._full_model.load_state_dict(self.model_state_dict())
        return self._full_model.eval()

    def backward(self, loss: torch.Tensor) -> None:
        if self.strategy == "fsdp":
            self.scaler.scale(loss).backward()
        else:
            self.booster.backward(loss, self.optimizer)

    def step(self) -> float | None:
        if self.strategy == "fsdp":
            return self._fsdp_step()
        norm = None
        if self.strategy not in self._PLUGIN_PRECISION:  # the ZeRO/Gemini optimizers clip inside step()
            norm = float(self.optimizer.clip_grad_by_norm(self.cfg.max_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad()
        self._updates += 1
        return norm

    def _fsdp_step(self) -> float:
        inner = self.optimizer.optim
        self.scaler.unscale_(inner)
        # FSDP's own clip: the norm over every rank's flat-parameter shard, not this rank's shard alone.
        norm = self.model.module.clip_grad_norm_(self.cfg.max_grad_norm)
        self.scaler.step(inner)
        self.scaler.update()
        inner.zero_grad(set_to_none=True)
        return float(norm)

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        if self.strategy == "gemini":  # parameters live in chunks; the wrapper gathers them (collective)
            return {k: cpu_fp32(v) for k, v in self.model.state_dict().items()}
        if self.strategy == "fsdp":
            return full_model_state(self.model.module)
        # ZeRO-1/2 shard optimizer state and gradients only: every rank holds full working weights. Under hybrid,
        # shardformer's parallel layers gather their tensor-parallel pieces in state_dict() (collective), and each
        # pipeline stage holds its own layers only: the stages' pieces are gathered into one state.
        if self._pipelined:
            return self._pipeline_state()
        return unwrap_state_dict(self.model.unwrap())

    def _pipeline_state(self) -> dict[str, torch.Tensor]:
        """The stages' pieces gathered into one state, once per optimizer step: validation and the saved weights
        that follow it share one gather. Every rank counts the same steps, so all skip the collective together."""
        if self._gathered is None or self._gathered[0] != self._updates:
            pieces: list[dict[str, torch.Tensor] | None] = [None] * self.cfg.pp
            dist.all_gather_object(pieces, unwrap_state_dict(self.model.unwrap()), group=self.booster.plugin.pp_group)
            self._gathered = (self._updates, {name: tensor for piece in pieces for name, tensor in piece.items()})
        return self._gathered[1]

    def optimizer_state_dict(self) -> dict[str, Any]:
        if self.strategy == "fsdp":
            return full_optimizer_state(self.model.module, self.optimizer.optim)
        # LowLevelZero and Gemini gather the shards (collective); under hybrid each rank returns its own shards'.
        return self.optimizer.state_dict()

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        if self.strategy == "fsdp":
            load_full_optimizer_state(self.model.module, self.optimizer.optim, state)
        else:
            self.optimizer.load_state_dict(state)


def pipeline_microbatches(batch_size: int, stages: int) -> int:
    """Micro-batches per step: four per stage keeps the 1F1B bubble ((stages - 1) / (micro-batches + stages - 1))
    small; fewer where the batch does not split evenly; at least one per stage."""
    for count in (4 * stages, 2 * stages, stages):
        if batch_size % count == 0:
            return count
    raise StrategyUnavailable(f"--batch-size {batch_size} does not split into micro-batches for {stages} pipeline "
                              f"stages; use a multiple of --pp ({stages})")
