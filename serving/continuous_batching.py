"""Continuous batching: every running generation advances by one token per model call, and requests join and leave
the running batch at token boundaries (as TGI and vLLM schedule), instead of waiting for one another behind a lock.

One thread owns the model. Each step it first prefills the requests that arrived (their prompts through the model
together, left-padded, which also yields their first tokens), merges their key/value caches into the batch's cache,
then decodes one token for every running sequence in a single forward pass, and drops the sequences that finished or
whose client left. Sequences of different lengths share the cache by left padding: each row's attention mask hides
its padding and its position ids count only its own tokens, so a sequence decodes the same whatever it is batched
with.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from serving.decoding import Decoding, TextStream, TokenChooser


@dataclass
class Generation:
    """One request's generation; `emit(kind, payload)` is called from the engine thread for each event:
    ("text", piece) as text is released, then ("done", summary)."""

    prompt_ids: list[int]
    decoding: Decoding
    emit: Callable[[str, Any], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled.set()

    def send(self, kind: str, payload: Any) -> None:
        """emit, on the engine thread: a caller that can no longer take events (its event loop closed) is cancelled
        rather than allowed to stop the engine for everyone."""
        try:
            self.emit(kind, payload)
        except Exception:  # noqa: BLE001 - any failure of the caller's callback means the caller is gone
            self.cancel()


class _Running:
    """Engine-side state of a generation in the batch."""

    def __init__(self, generation: Generation, tokenizer) -> None:
        self.generation = generation
        self.choose = TokenChooser(generation.decoding)
        self.text = TextStream(tokenizer, generation.decoding.stop)
        self.seen = torch.tensor(generation.prompt_ids, dtype=torch.long)
        self.new_tokens = 0
        self.finish: str | None = None
        self.first_token_at: float | None = None

    def take(self, logits: torch.Tensor, stop_ids: set[int]) -> None:
        token = self.choose(logits, self.seen)
        self.seen = torch.cat([self.seen, torch.tensor([token])])
        self.new_tokens += 1
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if token in stop_ids:
            self.finish = "stop"
        else:
            piece = self.text.add(token)
            if piece:
                self.generation.send("text", piece)
            if self.text.stopped:
                self.finish = "stop"
        if self.finish is None and self.new_tokens >= self.generation.decoding.max_new_tokens:
            self.finish = "length"

    def summary(self) -> dict[str, Any]:
        g = self.generation
        return {"text": self.text.text, "finish_reason": self.finish, "prompt_tokens": len(g.prompt_ids),
                "generated_tokens": self.new_tokens,
                "time_to_first_token_ms": round(1000 * ((self.first_token_at or time.perf_counter()) - g.submitted), 1)}


class ContinuousBatcher:
    """Runs generations for `model` (a transformers causal LM) on its own thread, at most `max_batch` at a time; more
    wait in arrival order. `on_finished(summary)` is called on the engine thread as each generation ends, its
    client still there or not (the service counts them for /metrics)."""

    def __init__(self, model: nn.Module, tokenizer, max_batch: int = 16,
                 on_finished: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.model, self.tokenizer, self.max_batch = model.eval(), tokenizer, max_batch
        self.on_finished = on_finished
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.incoming: queue.Queue[Generation] = queue.Queue()
        self.running: list[_Running] = []
        # The batch's keys and values per layer ((rows, heads, length, dim) each), rows in `running` order; models
        # with cache classes get them as a DynamicCache, older ones (GPT-2 in transformers 4.51) as tuples.
        self.cache: tuple | None = None
        self._cache_class = bool(getattr(model, "_supports_cache_class", False))
        self.mask = torch.zeros(0, 0, dtype=torch.long)  # (rows, cache length): 1 where a row has a real token
        self.steps = 0  # decode forward passes so far
        self.batched_rows = 0  # rows summed over those passes (mean batch = batched_rows / steps)
        self._thread = threading.Thread(target=self._loop, name="continuous-batcher", daemon=True)
        self._thread.start()

    def submit(self, generation: Generation) -> None:
        self.incoming.put(generation)

    @property
    def active(self) -> int:
        return len(self.running) + self.incoming.qsize()

    # --- the engine thread ---
    def _loop(self) -> None:
        while True:
            try:
                self._once()
            except Exception as exc:  # noqa: BLE001 - the engine thread must outlive any one batch
                self._fail_all(f"{type(exc).__name__}: {exc}")

    def _once(self) -> None:
        """Admit what arrived (blocking when idle), decode one token for every running sequence, drop the done."""
        arrived = [] if self.running else [self.incoming.get()]
        while len(self.running) + len(arrived) < self.max_batch:
            try:
                arrived.append(self.incoming.get_nowait())
            except queue.Empty:
                break
        if arrived:
            self._admit(arrived)
        self._drop_finished()
        if self.running:
            self._decode_step()
            self._drop_finished()

    def _fail_all(self, message: str) -> None:
        for row in self.running:
            row.generation.send("error", message)
        self.running, self.cache, self.mask = [], None, torch.zeros(0, 0, dtype=torch.long)

    @torch.inference_mode()
    def _admit(self, generations: list[Generation]) -> None:
        """Prefill the prompts that arrived together in one forward pass (left-padded to the longest), which also
        gives each its first token, and merge them into the running batch."""
        rows = []
        for generation in generations:
            row = _Running(generation, self.tokenizer)
            if generation.cancelled.is_set():  # its client left while it waited
                row.finish = "cancelled"
                self._done(row)
            else:
                rows.append(row)
        if not rows:
            return
        length = max(len(r.generation.prompt_ids) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            prompt = row.generation.prompt_ids
            ids[i, length - len(prompt):] = torch.tensor(prompt)
            mask[i, length - len(prompt):] = 1
        try:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0),
                             past_key_values=self._model_cache(None), use_cache=True)
            for i, row in enumerate(rows):
                row.take(out.logits[i, -1], self.stop_ids)
        except Exception as exc:  # noqa: BLE001 - report to the callers, keep serving the others
            for row in rows:
                row.generation.send("error", f"{type(exc).__name__}: {exc}")
            return
        self._merge(rows, _layers(out.past_key_values), mask)

    def _model_cache(self, layers: tuple | None) -> Any:
        if self._cache_class:
            return DynamicCache.from_legacy_cache(layers) if layers is not None else DynamicCache()
        return layers

    def _merge(self, rows: list[_Running], cache: tuple, mask: torch.Tensor) -> None:
        if self.cache is None or not self.running:
            self.running, self.cache, self.mask = rows, cache, mask
            return
        length = max(self.mask.shape[1], mask.shape[1])
        self.cache = tuple((torch.cat([_left_pad(k0, length), _left_pad(k1, length)]),
                            torch.cat([_left_pad(v0, length), _left_pad(v1, length)]))
                           for (k0, v0), (k1, v1) in zip(self.cache, cache, strict=True))
        self.mask = torch.cat([_left_pad(self.mask, length, dim=1), _left_pad(mask, length, dim=1)])
        self.running += rows

    @torch.inference_mode()
    def _decode_step(self) -> None:
        last = torch.tensor([[int(r.seen[-1])] for r in self.running])
        self.mask = torch.cat([self.mask, torch.ones(len(self.running), 1, dtype=torch.long)], dim=1)
        positions = self.mask.sum(dim=1, keepdim=True) - 1
        out = self.model(input_ids=last, attention_mask=self.mask, position_ids=positions,
                         past_key_values=self._model_cache(self.cache), use_cache=True)
        self.cache = _layers(out.past_key_values)
        self.steps += 1
        self.batched_rows += len(self.running)
        for i, row in enumerate(self.running):
            row.take(out.logits[i, -1], self.stop_ids)

    def _done(self, row: _Running) -> None:
        summary = row.summary()
        row.generation.send("done", summary)
        if self.on_finished is not None:
            self.on_finished(summary)

    def _drop_finished(self) -> None:
        keep = []
        for i, row in enumerate(self.running):
            if row.generation.cancelled.is_set():
                row.finish = "cancelled"
            if row.finish is None:
                keep.append(i)
                continue
            piece = row.text.finish()
            if piece and row.finish != "cancelled":
                row.generation.send("text", piece)
            self._done(row)
        if len(keep) == len(self.running):
            return
        self.running = [self.running[i] for i in keep]
        if not keep:
            self.cache, self.mask = None, torch.zeros(0, 0, dtype=torch.long)
            return
        index = torch.tensor(keep)
        mask = self.mask[index]
        start = int((mask.cumsum(dim=1) == 0).sum(dim=1).min())  # columns that are padding in every kept row
        self.mask = mask[:, start:]
        self.cache = tuple((k[index, :, start:], v[index, :, start:]) for k, v in self.cache)


def _layers(cache: Any) -> tuple:
    return cache.to_legacy_cache() if hasattr(cache, "to_legacy_cache") else tuple(cache)


def stop_token_ids(model: nn.Module, tokenizer) -> set[int]:
    """The tokenizer's end-of-text token and every end token the model's generation config names."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return {int(i) for i in (tokenizer.eos_token_id, *configured) if i is not None}


def _left_pad(tensor: torch.Tensor, length: int, dim: int = 2) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
