"""Backend registry: `--backend NAME` -> adapter class. Adapters import their library only when used."""

from __future__ import annotations

from training.config import TrainConfig
from training.engine.backends.base import Backend, StrategyUnavailable
from training.engine.backends.colossalai_backend import ColossalAIBackend
from training.engine.backends.fairscale_backend import FairScaleBackend
from training.engine.backends.torch_backend import TorchBackend

BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (TorchBackend, ColossalAIBackend, FairScaleBackend)}
DEFAULT_STRATEGY = {"torch": "ddp", "colossalai": "zero2", "fairscale": "oss"}


def backend_class(cfg: TrainConfig, device: str, hf_model: bool = False) -> type[Backend]:
    """The adapter for cfg.backend, after checking the strategy can run on `device` with the task's model
    (`hf_model`: a Hugging Face transformer); raises StrategyUnavailable."""
    if cfg.backend not in BACKENDS:
        raise StrategyUnavailable(f"unknown backend {cfg.backend!r}; choose one of: {', '.join(BACKENDS)}")
    cls = BACKENDS[cfg.backend]
    cls.check(cfg.strategy, cfg, device, hf_model)
    return cls


__all__ = ["BACKENDS", "DEFAULT_STRATEGY", "Backend", "StrategyUnavailable", "backend_class"]
