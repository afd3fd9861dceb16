"""A transformers causal LM as the continuous batcher's decoder (the `torch` runtime): eager PyTorch with a key/value
cache per layer.

Sequences of different lengths share the cache by left padding: each row's attention mask hides its padding and its
position ids count only its own tokens, so a sequence decodes the same whatever it is batched with.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache


class TorchDecoder:
    """Prefills prompts, joins them to the running rows, decodes one token per row, drops rows (see
    serving.continuous_batching.BatchDecoder)."""

    runtime = "torch"

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        # The batch's keys and values per layer ((rows, heads, length, dim) each); models with cache classes get them
        # as a DynamicCache, older ones (GPT-2 in transformers 4.51) as tuples.
        self.cache: tuple | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)  # (rows, cache length): 1 where a row has a real token
        self._cache_class = bool(getattr(model, "_supports_cache_class", False))
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    @property
    def threads(self) -> int:
        """The threads torch's operators run on (one setting for the whole process)."""
        return torch.get_num_threads()

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], every_position: bool = False) -> tuple[list[torch.Tensor], Any]:
        """The prompts through the model together (left-padded to the longest): per prompt its logits, (1, vocab) for
        the last position or (len, vocab) for every position, and their cache, for `join`."""
        length = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), length, dtype=torch.long)
        mask = torch.zeros(len(prompts), length, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, length - len(prompt):] = torch.tensor(prompt)
            mask[i, length - len(prompt):] = 1
        extra = {"logits_to_keep": 1} if self._keeps_logits and not every_position else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0),
                         past_key_values=self._model_cache(None), use_cache=True, **extra)
        logits = [out.logits[i, length - len(p):] if every_position else out.logits[i, -1:]
                  for i, p in enumerate(prompts)]
        return logits, (_layers(out.past_key_values), mask)

    @torch.inference_mode()
    def resume(self, cached: Any, length: int, prompts: list[list[int]]) -> tuple[list[torch.Tensor], Any]:
        rows, total = len(prompts), len(prompts[0])
        past = tuple((k[:, :, :length].expand(rows, -1, -1, -1), v[:, :, :length].expand(rows, -1, -1, -1))
                     for k, v in cached)
        mask = torch.ones(rows, total, dtype=torch.long)
        out = self.model(input_ids=torch.tensor([p[length:] for p in prompts]), attention_mask=mask,
                         position_ids=torch.arange(length, total).expand(rows, -1),
                         past_key_values=self._model_cache(past), use_cache=True)
        return list(out.logits[:, -1:]), (_layers(out.past_key_values), mask)

    @staticmethod
    def cached_row(rows: Any, index: int) -> tuple[Any, int]:
        cache, mask = rows
        start = int((mask[index] == 0).sum())  # left padding
        cached = tuple((k[index:index + 1, :, start:].clone(), v[index:index + 1, :, start:].clone())
                       for k, v in cache)
        return cached, sum(k.nbytes + v.nbytes for k, v in cached)

    def join(self, prefilled: list[Any]) -> None:
        for cache, mask in prefilled:
            if self.cache is None:
                self.cache, self.mask = cache, mask
                continue
            length = max(self.mask.shape[1], mask.shape[1])
            self.cache = tuple((torch.cat([_left_pad(k0, length), _left_pad(k1, length)]),
                                torch.cat([_left_pad(v0, length), _left_pad(v1, length)]))
                               for (k0, v0), (k1, v1) in zip(self.cache, cache, strict=True))
            self.mask = torch.cat([_left_pad(self.mask, length, dim=1), _left_pad(mask, length, dim=1)])

    @torch.inference_mode()
    def step(self, tokens: list[int]) -> torch.Tensor:
        """One token per running row in one forward pass; the next-token logits, (rows, vocab)."""
        self.mask = torch.cat([self.mask, torch.ones(len(tokens), 1, dtype=torch.long)], dim=1)
        positions = self.mask.sum(dim=1, keepdim=True) - 1
        out = self.model(input_ids=torch.tensor(tokens).unsqueeze(1), attention_mask=self.mask,
                         position_ids=positions, past_key_values=self._model_cache(self.cache), use_cache=True)
        self.cache = _layers(out.past_key_values)
        return out.logits[:, -1]

    def keep(self, rows: list[int]) -> None:
        """Only these rows (in this order) stay; columns that are padding in every kept row go."""
        if not rows:
            self.cache, self.mask = None, torch.zeros(0, 0, dtype=torch.long)
            return
        index = torch.tensor(rows)
        mask = self.mask[index]
        start = int((mask.cumsum(dim=1) == 0).sum(dim=1).min())
        self.mask = mask[:, start:]
        self.cache = tuple((k[index, :, start:], v[index, :, start:]) for k, v in self.cache)

    def _model_cache(self, layers: tuple | None) -> Any:
        if self._cache_class:
            return DynamicCache.from_legacy_cache(layers) if layers is not None else DynamicCache()
        return layers


def _layers(cache: Any) -> tuple:
    return cache.to_legacy_cache() if hasattr(cache, "to_legacy_cache") else tuple(cache)


def _left_pad(tensor: torch.Tensor, length: int, dim: int = 2) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
