"""The one interface every distributed backend implements; the training loop only talks to this."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from training.config import TrainConfig
from training.engine.distributed import DistContext

_WRAPPER_PREFIXES = ("module.", "_checkpoint_wrapped_module.", "_fpw_module.", "_fsdp_wrapped_module.", "_orig_mod.")


def plain_name(name: str) -> str:
    """A parameter's name without the prefixes wrappers add (DDP, checkpoint_wrapper, fairscale, torch.compile)."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


@dataclass(frozen=True)
class OptimizerSpec:
    """Optimizer class and arguments; sharding optimizers (FairScale OSS) construct it per parameter shard.
    `group_of` puts each parameter (by its plain name) into a numbered group whose learning rate the training loop
    scales on its own (see TrainingJob.lr_scales); None: one group."""

    cls: type[torch.optim.Optimizer]
    kwargs: dict[str, Any]
    group_of: Callable[[str], int] | None = None

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        named = [(plain_name(n), p) for n, p in model.named_parameters() if p.requires_grad]
        if self.group_of is None:
            return [{"params": [p for _, p in named], "group_index": 0}]
        groups: dict[int, list[nn.Parameter]] = {}
        for name, param in named:
            groups.setdefault(self.group_of(name), []).append(param)
        return [{"params": groups[i], "group_index": i} for i in sorted(groups)]

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        return self.cls(self.param_groups(model), **self.kwargs)


@dataclass(frozen=True)
class PipelineLoss:
    """What a pipeline schedule needs from a task, since it calls the model itself once per micro-batch: the batch as
    the model's keyword arguments (labels included, so each micro-batch carries its own), and the loss from the last
    stage's outputs and one micro-batch of those arguments."""

    inputs: Callable[[tuple[torch.Tensor, ...]], dict[str, torch.Tensor]]
    loss: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]


PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class StrategyUnavailable(RuntimeError):
    """This backend/strategy cannot run here (device, model or configuration); the message says why in one line."""


class Backend(ABC):
    name: ClassVar[str]
    strategies: ClassVar[tuple[str, ...]]
    # Strategies that shard or bucket flat views of the parameters: a channels-last convolution weight (not
    # contiguous in memory) cannot be viewed flat, so they get contiguous parameters.
    flattening: ClassVar[tuple[str, ...]] = ()
    # Strategies that split the model across processes, with the size options (tp, pp) each one takes.
    model_parallel: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Strategies that cannot run under autocast, with why: --precision auto gives them fp32, bf16 or fp16 is refused.
    fp32_only: ClassVar[dict[str, str]] = {}

    def __init__(self, strategy: str, ctx: DistContext, cfg: TrainConfig) -> None:
        self.strategy, self.ctx, self.cfg = strategy, ctx, cfg
        self.dtype = PRECISION_DTYPES[cfg.precision]
        self.model: nn.Module | None = None
        self.optimizer: Any = None
        # True where each rank's optimizer holds state for its own parameter shards only (tensor parallelism):
        # resume then keeps one optimizer file per rank instead of one full state.
        self.optimizer_state_per_rank = False

    @classmethod
    def check(cls, strategy: str, cfg: TrainConfig, device: str, hf_model: bool = False) -> None:
        """Raise StrategyUnavailable before any process starts, when this combination cannot run. `hf_model`: the
        task's model is a Hugging Face transformer (what tensor parallelism through shardformer needs)."""
        if strategy not in cls.strategies:
            raise StrategyUnavailable(f"backend {cls.name} has no strategy {strategy!r}; "
                                      f"choose one of: {', '.join(cls.strategies)}")
        if strategy in cls.fp32_only and cfg.precision != "fp32":
            raise StrategyUnavailable(f"{cls.name} {strategy} {cls.fp32_only[strategy]}; use --precision fp32 with it")
        if cfg.precision == "fp16" and device != "cuda":
            raise StrategyUnavailable("fp16 needs loss scaling on a GPU; use --precision bf16 (or fp32) on the CPU")
        sizes = cls.model_parallel.get(strategy, ())
        for size in ("tp", "pp"):
            if getattr(cfg, size) > 1 and size not in sizes:
                raise StrategyUnavailable(f"--tp/--pp apply only to --backend colossalai --strategy hybrid (both) "
                                          f"and --backend fairscale --strategy tp (--tp); not --{size} with "
                                          f"{cls.name} {strategy}")

    # --- set-up ---
    def place(self, model: nn.Module) -> nn.Module:
        """The model on this rank's device, in the memory format its strategy can shard."""
        model.to(self.ctx.device)
        if self.strategy in self.flattening:
            model.to(memory_format=torch.contiguous_format)
        return model

    @abstractmethod
    def wrap(self, model: nn.Module, optimizer: OptimizerSpec, batch_size: int) -> nn.Module:
        """Place, shard and wrap `model`, build its optimizer; returns the module to call for forward passes.
        `batch_size`: samples per step on this data-parallel rank (pipeline schedules split it into micro-batches)."""

    def checkpoint_block(self, block: nn.Module) -> nn.Module:
        """Activation checkpointing for one block (torch.utils.checkpoint; fairscale overrides)."""
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        return checkpoint_wrapper(block)

    def apply_checkpointing(self, model: nn.Module) -> None:
        blocks = model_blocks(model)
        if blocks is None:
            raise StrategyUnavailable(f"{type(model).__name__} has no `blocks` to checkpoint")
        for i, block in enumerate(blocks):
            blocks[i] = self.checkpoint_block(block)

    # --- one optimisation step ---
    def autocast(self) -> contextlib.AbstractContextManager:
        enabled = self.dtype != torch.float32
        return torch.autocast(self.ctx.device.type, dtype=self.dtype, enabled=enabled)

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Skip gradient synchronisation on accumulation micro-steps (where the strategy allows it)."""
        return contextlib.nullcontext()

    def forward_backward(self, loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
                         batch: tuple[torch.Tensor, ...], scale: float,
                         pipeline: PipelineLoss | None = None) -> torch.Tensor:
        """One micro-step: the loss under autocast, backward of loss * scale; returns the loss, detached, the same
        on every rank of a model-parallel group."""
        with self.autocast():
            loss = loss_fn(self.model, batch)
        self.backward(loss * scale)
        return loss.detach()

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None: ...

    @abstractmethod
    def step(self) -> float | None:
        """Clip gradients to cfg.max_grad_norm, step, zero gradients; returns the gradient norm when known."""

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def data_parallel(self) -> tuple[int, int]:
        """(rank, size) of this process among data-parallel replicas; model-parallel peers share a rank."""
        return self.ctx.rank, self.ctx.world_size

    def eval_model(self) -> nn.Module:
        """The module validation calls like the plain model (collective where it must gather weights)."""
        return self.model

    # --- state (full, consolidated) ---
    @abstractmethod
    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """Full model weights on the CPU; collective, call on every rank (rank 0's copy is the one to save)."""

    @abstractmethod
    def optimizer_state_dict(self) -> dict[str, Any]:
        """Full optimizer state; collective. Meaningful on rank 0; other ranks may get a partial or empty dict."""

    @abstractmethod
    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        """Load a full optimizer state saved by `optimizer_state_dict`; every rank passes the full dict."""


def model_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The repeated layers to shard or checkpoint one by one: `model.blocks` for modelyard's models, the encoder's
    layer list for a Hugging Face model."""
    blocks = getattr(model, "blocks", None)
    if blocks is None and hasattr(model, "base_model"):
        blocks = next((m for m in model.base_model.modules() if isinstance(m, nn.ModuleList)), None)
    return blocks


def cpu_fp32(value: torch.Tensor) -> torch.Tensor:
    """A saved tensor: floating point in fp32 whatever the training precision; integer buffers keep their dtype."""
    return value.detach().to("cpu", torch.float32) if value.is_floating_point() else value.detach().cpu()


def unwrap_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without wrapper prefixes (checkpoint_wrapper's `_checkpoint_wrapped_module.`, fairscale's);
    callers pass the module inside DDP."""
    return {key.replace("_checkpoint_wrapped_module.", "").replace("_fpw_module.", ""): cpu_fp32(value)
            for key, value in model.state_dict().items()}


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Whole, unsharded fp32 weights of an FSDP (1 or 2) module on the CPU, under the original parameter names
    (collective: call on every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k.replace("_checkpoint_wrapped_module.", ""): cpu_fp32(v) for k, v in state.items()}


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                cpu_offload=True))


def load_full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
