"""The key/value caches of recent prompts, so that a prompt starting like one of them (a chat's history, a shared
system prompt, the same request again) prefills only the tokens that differ, as llama.cpp's server and vLLM's
automatic prefix caching do. Entries are whole prompts (the runtime's own cache of one row), bounded in bytes and
evicted least recently used first."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np


class PrefixCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[int, ...], tuple[Any, int]] = OrderedDict()  # prompt -> (cache, bytes)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, prompt: list[int]) -> bool:
        return tuple(prompt) in self._entries

    def longest(self, prompt: list[int]) -> tuple[Any, int] | None:
        """The cache sharing the longest prefix with `prompt` and that prefix's length, at most all but the last
        token (the model must see one token to give the next one's logits); None when none shares a token."""
        best, best_length = None, 0
        tokens = np.asarray(prompt[:-1])
        for key in self._entries:
            if not len(tokens) or key[0] != tokens[0]:  # most entries part at the first token: skip them cheaply
                continue
            n = min(len(key), len(tokens))
            differ = np.flatnonzero(np.asarray(key[:n]) != tokens[:n])
            length = int(differ[0]) if len(differ) else n
            if length > best_length:
                best, best_length = key, length
        if best is None:
            return None
        self._entries.move_to_end(best)
        return self._entries[best][0], best_length

    def add(self, prompt: list[int], cache: Any, size: int) -> None:
        """Keep `cache` (`size` bytes) of `prompt`; entries that are a prefix of it are dropped (it holds theirs)."""
        key = tuple(prompt)
        if key in self._entries or size > self.max_bytes:
            return
        for old in [k for k in self._entries if len(k) < len(key) and key[:len(k)] == k]:
            self.bytes -= self._entries.pop(old)[1]
        self._entries[key] = (cache, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.bytes -= self._entries.popitem(last=False)[1][1]
