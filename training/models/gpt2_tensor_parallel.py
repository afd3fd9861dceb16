"""GPT-2 (transformers' GPT2LMHeadModel) split Megatron style across tensor-parallel ranks for fairscale: in each
block the fused query|key|value projection and the MLP's first projection become column-parallel (a rank holds whole
heads and 1/size of the MLP's hidden units), the attention output and the MLP's second projection
row-parallel (their partial sums added across ranks). So a block costs two all-reduces forward and two backward.

Embeddings, layer norms and the tied language-model head stay whole on every rank: GPT-2's 50,257-token vocabulary
does not split evenly across ranks, and a vocabulary-parallel head would also need a vocabulary-parallel loss
instead of the model's own. HF's Conv1D stores weights [in, out], the transpose of nn.Linear; slices are joined back
into that layout, so the saved checkpoint is the standard model."""

from __future__ import annotations

import torch
from torch import nn

from training.engine.backends.base import StrategyUnavailable
from training.engine.tensor_parallel import Sliced, column_parallel, join_columns, register_plan, row_parallel


def gpt2_plan(model: nn.Module, rank: int, size: int) -> list[Sliced]:
    heads = model.config.n_head
    if heads % size or model.config.n_inner and model.config.n_inner % size:
        raise StrategyUnavailable(f"fairscale tp splits GPT-2's {heads} attention heads and its MLP across --tp "
                                  f"ranks; choose a --tp that divides {heads}")
    if model.config.add_cross_attention:
        raise StrategyUnavailable("fairscale tp has no plan for GPT-2's cross-attention layers")
    sliced: list[Sliced] = []
    for i, block in enumerate(model.transformer.h):
        prefix = f"transformer.h.{i}"
        attn, mlp = block.attn, block.mlp
        attn.c_attn = _column(attn.c_attn, 3, rank, size, f"{prefix}.attn.c_attn", sliced)
        attn.c_proj = _row(attn.c_proj, rank, size, f"{prefix}.attn.c_proj", sliced)
        attn.num_heads //= size
        attn.split_size //= size  # the split of this rank's query|key|value output
        mlp.c_fc = _column(mlp.c_fc, 1, rank, size, f"{prefix}.mlp.c_fc", sliced)
        mlp.c_proj = _row(mlp.c_proj, rank, size, f"{prefix}.mlp.c_proj", sliced)
    return sliced


def _column(conv: nn.Module, groups: int, rank: int, size: int, name: str, sliced: list[Sliced]) -> nn.Module:
    layer = column_parallel(conv.weight.detach().T, conv.bias.detach(), groups, rank, size)
    join = join_columns(groups)
    sliced.append(Sliced(f"{name}.weight", layer.weight, lambda slices: join(slices).T.contiguous()))
    sliced.append(Sliced(f"{name}.bias", layer.bias, join))
    return layer


def _row(conv: nn.Module, rank: int, size: int, name: str, sliced: list[Sliced]) -> nn.Module:
    layer = row_parallel(conv.weight.detach().T, conv.bias.detach(), rank, size)
    sliced.append(Sliced(f"{name}.weight", layer.weight, lambda slices: torch.cat(slices, dim=1).T.contiguous()))
    return layer  # its bias is whole on every rank


register_plan("GPT2LMHeadModel", gpt2_plan)
