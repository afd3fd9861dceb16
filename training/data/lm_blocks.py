"""A language-model corpus: articles tokenized, joined with the end-of-text token and cut into blocks, the way
Hugging Face's `run_clm` groups texts. The token ids are cached on disk by the text and the tokenizer's fingerprints,
so a second run (or the evaluation after training) does not tokenize again."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from training.data.cache import cache_root


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """The vocabulary and merge rules (the tokenizer's own JSON), so two tokenizers that split alike share a cache."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def end_of_text(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no end-of-text token to join articles with")
    return int(tokenizer.eos_token_id)


@dataclass(frozen=True)
class CorpusIds:
    ids: np.ndarray  # int32, every article followed by the end-of-text token
    ends: np.ndarray  # int64, the end offset of each article in `ids`

    def head(self, max_tokens: int | None) -> tuple[np.ndarray, int]:
        """The whole articles that fit in `max_tokens` (at least one), and how many they are."""
        if max_tokens is None or max_tokens >= len(self.ids):
            return self.ids, len(self.ends)
        count = max(1, int(np.searchsorted(self.ends, max_tokens, side="right")))
        return self.ids[: self.ends[count - 1]], count


def token_ids(tokenizer: Any, articles: list[str], label: str = "tokenize") -> CorpusIds:
    """All articles' ids, each followed by the end-of-text token (cached on disk)."""
    digest = hashlib.sha256("\x1e".join(articles).encode()).hexdigest()[:16]
    cache = cache_root() / "lm-tokens" / f"{digest}-{tokenizer_fingerprint(tokenizer)}.npz"
    if cache.is_file():
        with np.load(cache) as stored:
            return CorpusIds(stored["ids"], stored["ends"])
    eos = end_of_text(tokenizer)
    pieces = []
    for start in tqdm(range(0, len(articles), 64), desc=label, unit="batch", dynamic_ncols=True, leave=False):
        for ids in tokenizer(articles[start:start + 64], add_special_tokens=False)["input_ids"]:
            pieces.append(np.asarray([*ids, eos], dtype=np.int32))
    corpus = CorpusIds(np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32),
                       np.cumsum([len(piece) for piece in pieces], dtype=np.int64))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, ids=corpus.ids, ends=corpus.ends)
    os.replace(tmp, cache)  # atomic: a concurrent reader never sees half a file
    return corpus


class TokenBlocks(Dataset):
    """Consecutive blocks of `block_size` tokens; the remainder shorter than a block is dropped (as run_clm does).
    Each item is (input_ids,); the labels are the inputs, shifted inside the model."""

    def __init__(self, ids: np.ndarray, block_size: int) -> None:
        if len(ids) < block_size:
            raise ValueError(f"the corpus has {len(ids)} tokens, fewer than one block of {block_size}; "
                             f"use a smaller --block-size")
        self.ids = torch.from_numpy(ids[: len(ids) // block_size * block_size].astype(np.int64))
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.ids) // self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor]:
        return (self.ids[i * self.block_size:(i + 1) * self.block_size],)
