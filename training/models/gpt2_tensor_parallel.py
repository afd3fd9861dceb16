"""GPT-2 (transformers' GPT2LMHeadModel) split Megatron style across tensor-parallel ranks for fairscale: in each
block the fused query|key|value projection and the MLP's first projection become column-parallel (a rank holds whole
heads and 1/size of the MLP's hidden units), the attention output and the MLP's second projection
row-parallel (their partial sums added across ranks). So a block costs two all-reduces forward and two backward.

The token embedding is split by vocabulary (VocabParallelEmbedding, padded to a multiple of the ranks: 50,257 is
odd) and the head tied to it scores each rank's share of the vocabulary, so the loss is fairscale's vocabulary-
parallel cross-entropy: in a small GPT-2 the 50,257 x width head is most of the compute. Position embeddings and
layer norms stay whole on every rank. HF's Conv1D stores weights [in, out], the transpose of nn.Linear; slices are
joined back into that layout, so the saved checkpoint is the standard model."""

from __future__ import annotations

import torch
from torch import nn

from training.engine.backends.base import StrategyUnavailable
from training.engine.tensor_parallel import (
    Sliced,
    VocabParallelHead,
    column_parallel,
    join_columns,
    join_vocabulary,
    register_plan,
    row_parallel,
    vocab_parallel_causal_lm_loss,
    vocab_parallel_embedding,
)


def gpt2_plan(model: nn.Module, rank: int, size: int) -> list[Sliced]:
    heads = model.config.n_head
    if heads % size or model.config.n_inner and model.config.n_inner % size:
        raise StrategyUnavailable(f"fairscale tp splits GPT-2's {heads} attention heads and its MLP across --tp "
                                  f"ranks; choose a --tp that divides {heads}")
    if model.config.add_cross_attention or model.lm_head.weight is not model.transformer.wte.weight:
        raise StrategyUnavailable("fairscale tp has a plan for GPT-2 with its head tied to the embedding and no "
                                  "cross-attention")
    sliced = _vocabulary(model, rank, size)
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


def _vocabulary(model: nn.Module, rank: int, size: int) -> list[Sliced]:
    vocab = model.config.vocab_size
    embedding = vocab_parallel_embedding(model.transformer.wte.weight.detach(), rank, size)
    model.transformer.wte = embedding
    model.lm_head = VocabParallelHead(embedding, vocab)
    model.loss_function = vocab_parallel_causal_lm_loss  # transformers' forward calls it with the split logits
    join = join_vocabulary(vocab)
    return [Sliced("transformer.wte.weight", embedding.weight, join), Sliced("lm_head.weight", embedding.weight, join)]


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
