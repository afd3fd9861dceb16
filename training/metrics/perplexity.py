"""Perplexity of a causal language model over a long token stream, by the sliding-window method: windows of the
model's context advance by `stride` tokens and each window scores only the tokens the previous one did not, so every
token (but the first) is scored exactly once, with at least `context - stride` tokens of context where the stream
allows it."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


@dataclass(frozen=True)
class Perplexity:
    nll: float  # summed negative log-likelihood (nats) of the scored tokens
    tokens: int  # tokens scored
    words: int | None = None  # words of the original text, for word-level perplexity

    @property
    def token_level(self) -> float:
        return math.exp(self.nll / max(self.tokens, 1))

    @property
    def word_level(self) -> float | None:
        return math.exp(self.nll / self.words) if self.words else None

    def as_dict(self) -> dict[str, float | int | None]:
        word = self.word_level
        return {"perplexity": round(self.token_level, 3), "word_perplexity": round(word, 3) if word else None,
                "tokens": self.tokens, "words": self.words, "nll_per_token": round(self.nll / max(self.tokens, 1), 5)}


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) per window: tokens [begin, end) go in, the last `scored` of them are scored."""
    if not 0 < stride <= context:
        raise ValueError(f"stride must be between 1 and the context ({context}); got {stride}")
    out, previous_end = [], 1  # the first token has no context and is never scored
    for begin in range(0, max(n_tokens - 1, 1), stride):
        end = min(begin + context, n_tokens)
        if end > previous_end:
            out.append((begin, end, end - previous_end))
            previous_end = end
        if end == n_tokens:
            break
    return out


@torch.no_grad()
def sliding_perplexity(model: nn.Module, ids: np.ndarray, context: int, stride: int, words: int | None = None,
                       batch: int | None = None, label: str = "perplexity") -> Perplexity:
    """Windows go through the model `batch` at a time (default 2 on a CPU, where larger batches of long windows ran
    slower here: 34 s for SmolLM2 over 9,909 tokens at batch 2, 50 s at 8; 8 on a GPU). Models whose forward takes
    `logits_to_keep` (llama and most recent ones) project to the vocabulary only the positions scored, about half of
    each window at the default stride."""
    model.eval()
    device = next(model.parameters()).device
    batch = batch or (8 if device.type == "cuda" else 2)
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    stream = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    spans = windows(len(stream), context, stride)
    nll, scored = 0.0, 0
    for start in tqdm(range(0, len(spans), batch), desc=label, unit="batch", dynamic_ncols=True, leave=False):
        group = spans[start:start + batch]
        length = max(end - begin for begin, end, _ in group)
        inputs = torch.zeros(len(group), length, dtype=torch.long)
        mask = torch.zeros(len(group), length, dtype=torch.long)
        for row, (begin, end, _) in enumerate(group):
            inputs[row, : end - begin] = stream[begin:end]
            mask[row, : end - begin] = 1
        # position p predicts token p + 1; the group's rows score positions from `first` on
        first = min(end - begin - 1 - count for begin, end, count in group) if keeps_logits else 0
        extra = {"logits_to_keep": torch.arange(first, length - 1)} if keeps_logits else {}
        logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device), **extra).logits
        logits = logits[:, : length - 1 - first].float()
        targets = inputs[:, first + 1:].to(device)
        token_nll = nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        for row, (begin, end, count) in enumerate(group):
            last = end - begin - 1 - first  # the prediction of token end-1 sits at position end-2
            nll += float(token_nll[row, last - count:last].sum())
            scored += count
    return Perplexity(nll, scored, words)
