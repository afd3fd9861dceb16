"""GPT-2 (transformers' GPT2LMHeadModel) as a chain of single-tensor stages for fairscale's Pipe: token and position
embeddings, one stage per transformer block, the final layer norm with the language-model head. Blocks need no mask
between them: GPT-2's attention is causal by itself when given none, and training blocks hold no padding."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.engine.pipeline_chain import Chain, register_chain


class _Embeddings(nn.Module):
    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.wte, self.wpe, self.drop = transformer.wte, transformer.wpe, transformer.drop

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.drop(self.wte(input_ids) + self.wpe(positions))


class _Block(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.block(hidden)[0]


class _Head(nn.Module):
    def __init__(self, ln_f: nn.Module, lm_head: nn.Linear) -> None:
        super().__init__()
        self.ln_f, self.lm_head = ln_f, lm_head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(hidden))


def gpt2_chain(model: nn.Module) -> Chain:
    from transformers.modeling_outputs import CausalLMOutput

    transformer, tied = model.transformer, []
    head = model.lm_head
    if head.weight is transformer.wte.weight:  # tied: the last partition gets its own copy (see Chain.tied)
        head = nn.Linear(head.in_features, head.out_features, bias=False, device=head.weight.device)
        head.weight = nn.Parameter(transformer.wte.weight.detach().clone(),
                                   requires_grad=transformer.wte.weight.requires_grad)
        tied.append((transformer.wte.weight, head.weight))
    stages = nn.Sequential(_Embeddings(transformer), *map(_Block, transformer.h), _Head(transformer.ln_f, head))

    def first(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("a pipelined GPT-2 passes no mask between its stages: give it blocks without padding")
        return input_ids

    def outputs(logits: torch.Tensor, labels: torch.Tensor | None = None, **_: Any) -> Any:
        loss = None if labels is None else model.loss_function(logits, labels, vocab_size=model.config.vocab_size)
        return CausalLMOutput(loss=loss, logits=logits)

    return Chain(stages, first, outputs, tied)


register_chain("GPT2LMHeadModel", gpt2_chain)
