"""Models seen as chains of single-tensor stages, which is what fairscale's Pipe can cut into partitions.

A model of our own says so with `pipeline_stages()` (an nn.Sequential over one tensor). A library model cannot
carry that method, so its chain is registered here by class name, by the module that knows its layers
(training.models.causal_lm registers GPT-2's); the engine never imports model code to find one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Chain:
    """`stages` over one tensor; `first(**inputs)` is the tensor the first stage takes from the model's arguments,
    `outputs(last, **inputs)` what the model would answer given the last stage's output. `tied`: (parameter, copy)
    pairs, a weight the model shares between its first and last stages (GPT-2's embedding and head) held twice so
    that each partition owns its own; the copy's gradient is added to the parameter's and the copy is reset to the
    parameter after each step, which trains the pair exactly as the one shared weight."""

    stages: nn.Sequential
    first: Callable[..., torch.Tensor] = lambda x: x
    outputs: Callable[..., Any] = lambda last, x: last
    tied: list[tuple[nn.Parameter, nn.Parameter]] = field(default_factory=list)


_BUILDERS: dict[str, Callable[[nn.Module], Chain]] = {}


def register_chain(class_name: str, build: Callable[[nn.Module], Chain]) -> None:
    _BUILDERS[class_name] = build


def chain_of(model: nn.Module) -> Chain | None:
    """The model as a chain, or None where it is not one (its layers pass masks or several tensors between them)."""
    if hasattr(model, "pipeline_stages"):
        return Chain(model.pipeline_stages())
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
    build = _BUILDERS.get(type(base).__name__)
    return build(base) if build else None
