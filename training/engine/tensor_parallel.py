"""Megatron-style tensor parallelism through fairscale's model_parallel layers, planned per model class.

A plan replaces a model's projections in place with fairscale ColumnParallelLinear / RowParallelLinear holding this
rank's slice of the weights, and says for each sliced parameter how the ranks' slices make the original tensor
again, so that the saved checkpoint is the model's own layout. Plans are registered by class name by the module that
knows the model's layers (training.models.causal_lm registers GPT-2's); the engine never imports model code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Sliced:
    """One parameter held in slices across the tensor-parallel ranks: `name` in the model's state dict, `param`
    this rank's slice, `join(slices)` the original tensor from every rank's slice (rank order)."""

    name: str
    param: nn.Parameter
    join: Callable[[list[torch.Tensor]], torch.Tensor]


Plan = Callable[[nn.Module, int, int], list[Sliced]]  # (model, rank, size) -> the parameters it sliced
_PLANS: dict[str, Plan] = {}


def register_plan(class_name: str, plan: Plan) -> None:
    _PLANS[class_name] = plan


def plan_of(model: nn.Module) -> Plan | None:
    return _PLANS.get(type(model).__name__)


def column_rows(out_features: int, groups: int, rank: int, size: int) -> torch.Tensor:
    """Output rows a column-parallel rank holds. `groups`: blocks laid side by side in the output (GPT-2's fused
    query|key|value is 3), each split across the ranks, so a rank gets whole heads of each."""
    block = out_features // groups
    width = block // size
    return torch.cat([torch.arange(g * block + rank * width, g * block + (rank + 1) * width) for g in range(groups)])


def join_columns(groups: int) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """Inverse of column_rows over every rank's slice (rows first, as nn.Linear stores them)."""
    def join(slices: list[torch.Tensor]) -> torch.Tensor:
        parts = [s.chunk(groups, dim=0) for s in slices]
        return torch.cat([parts[r][g] for g in range(groups) for r in range(len(slices))], dim=0)
    return join


def column_parallel(weight: torch.Tensor, bias: torch.Tensor | None, groups: int, rank: int,
                    size: int) -> nn.Module:
    """fairscale ColumnParallelLinear holding rank `rank`'s rows of the nn.Linear-layout `weight` [out, in]; its
    output stays split (the row-parallel layer after it takes the split input)."""
    from fairscale.nn.model_parallel import ColumnParallelLinear

    out_features, in_features = weight.shape
    layer = ColumnParallelLinear(in_features, out_features, bias=bias is not None, gather_output=False,
                                 init_method=_keep)
    rows = column_rows(out_features, groups, rank, size)
    with torch.no_grad():
        layer.weight.copy_(weight[rows])
        if bias is not None:
            layer.bias.copy_(bias[rows])
    return layer


def row_parallel(weight: torch.Tensor, bias: torch.Tensor | None, rank: int, size: int) -> nn.Module:
    """fairscale RowParallelLinear over rank `rank`'s input columns of `weight` [out, in]; its output is summed
    across the ranks, then the (whole, replicated) bias added."""
    from fairscale.nn.model_parallel import RowParallelLinear

    out_features, in_features = weight.shape
    layer = RowParallelLinear(in_features, out_features, bias=bias is not None, input_is_parallel=True,
                              init_method=_keep)
    with torch.no_grad():
        layer.weight.copy_(weight.chunk(size, dim=1)[rank])
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    return tensor  # the slices are copied from the model's trained weights: no initialisation to draw
