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


def vocab_parallel_embedding(weight: torch.Tensor, rank: int, size: int) -> nn.Module:
    """fairscale VocabParallelEmbedding holding rank `rank`'s rows of `weight` [vocab, dim]. A vocabulary that does not
    split evenly (GPT-2's 50,257) is padded with zero rows to a multiple of `size`, as Megatron pads it; no token id
    reaches them, and VocabParallelHead keeps them out of the softmax."""
    from fairscale.nn.model_parallel import VocabParallelEmbedding

    vocab, dim = weight.shape
    padded = torch.cat([weight, weight.new_zeros((-vocab) % size, dim)])
    layer = VocabParallelEmbedding(len(padded), dim, init_method=_keep)
    with torch.no_grad():
        layer.weight.copy_(padded.chunk(size, dim=0)[rank])
    return layer


def join_vocabulary(vocab: int) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    return lambda slices: torch.cat(slices, dim=0)[:vocab]


class VocabParallelHead(nn.Module):
    """A language-model head tied to a VocabParallelEmbedding: this rank's share of the logits (its vocabulary rows),
    padding rows at -inf. Pair it with vocab_parallel_causal_lm_loss: no rank ever holds the whole logits."""

    def __init__(self, embedding: nn.Module, vocab: int) -> None:
        super().__init__()
        self.weight = embedding.weight  # the same Parameter: the tie holds
        self.first, self.vocab = embedding.vocab_start_index, vocab

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        from fairscale.nn.model_parallel.mappings import copy_to_model_parallel_region

        logits = nn.functional.linear(copy_to_model_parallel_region(hidden), self.weight)
        padding = self.first + logits.shape[-1] - self.vocab
        if padding > 0:
            logits = logits.float()
            logits[..., logits.shape[-1] - padding:] = float("-inf")
        return logits


def vocab_parallel_causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                                  **_: object) -> torch.Tensor:
    """Next-token cross-entropy over vocabulary-split logits (fairscale's vocab_parallel_cross_entropy), shifted and
    averaged over the labelled tokens as transformers' ForCausalLMLoss is."""
    from fairscale.nn.model_parallel import vocab_parallel_cross_entropy

    logits, labels = logits[..., :-1, :].float().contiguous(), labels[..., 1:].contiguous()
    kept = labels != ignore_index
    losses = vocab_parallel_cross_entropy(logits, labels.masked_fill(~kept, 0))
    return (losses * kept).sum() / kept.sum().clamp(min=1)


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    return tensor  # the slices are copied from the model's trained weights: no initialisation to draw
