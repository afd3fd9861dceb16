"""Continuous batching: every running generation advances by one token per model call, and requests join and leave
the running batch at token boundaries (as TGI and vLLM schedule), instead of waiting for one another behind a lock.

One thread owns the model. Each step it first prefills the requests that arrived (their prompts through the model
together, which also yields their first tokens), joins them to the running rows, then decodes one token for every
running sequence in a single forward pass, and drops the sequences that finished or whose client left. The model
and its key/value cache sit behind a BatchDecoder (serving.torch_decoder, serving.onnx_decoder), so the scheduling
is the same whatever runtime computes the logits.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from serving.decoding import Decoding, TextStream, TokenChooser, prompt_logprobs, token_logprob
from serving.prefix_cache import PrefixCache


class BatchDecoder(Protocol):
    """A model and the key/value cache of the rows it is decoding."""

    runtime: str

    @property
    def threads(self) -> int:
        """The threads the decoder's operators run on."""

    def prefill(self, prompts: list[list[int]], every_position: bool = False) -> tuple[list[torch.Tensor], Any]:
        """Logits per prompt ((1, vocab) for its last position, (len, vocab) for each with `every_position`) and
        the new rows' cache, for `join`."""

    def resume(self, cached: Any, length: int, prompts: list[list[int]]) -> tuple[list[torch.Tensor], Any]:
        """`prefill` of prompts of one length whose first `length` tokens are those of `cached` (from
        `cached_row`): only the rest goes through the model."""

    def cached_row(self, rows: Any, index: int) -> tuple[Any, int]:
        """A copy of prefilled row `index`'s cache (its prompt's positions), for `resume`, and its size in bytes."""

    def join(self, prefilled: list[Any]) -> None:
        """Append the rows of these prefills (or resumes) to the running ones, in order."""

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token per running row; the next-token logits, (rows, vocab)."""

    def keep(self, rows: list[int]) -> None:
        """Keep only these running rows, in this order."""


@dataclass
class Generation:
    """One request's generation; `emit(kind, payload)` is called from the engine thread for each event:
    ("prompt", [TokenLogprob]) when the decoding echoes, ("token", TokenLogprob) per token when it wants logprobs,
    ("text", piece) as text is released, then ("done", summary) or ("error", message)."""

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

    def __init__(self, generation: Generation, tokenizer, stop_ids: set[int]) -> None:
        self.generation = generation
        self.choose = TokenChooser(generation.decoding)
        self.text = TextStream(tokenizer, generation.decoding.stop)
        self.stop_ids = stop_ids | set(generation.decoding.stop_token_ids)
        self.seen = torch.tensor(generation.prompt_ids, dtype=torch.long)
        self.last = generation.prompt_ids[-1]
        self.new_tokens = 0
        self.cached_tokens = 0  # prompt tokens taken from the prefix cache
        self.finish: str | None = None
        self.first_token_at: float | None = None
        if generation.decoding.max_new_tokens == 0:
            self.finish = "length"

    def take(self, logits: torch.Tensor) -> None:
        decoding = self.generation.decoding
        token = self.choose(logits, self.seen)
        self.seen = torch.cat([self.seen, torch.tensor([token])])
        self.last = token
        self.new_tokens += 1
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if decoding.logprobs is not None:
            self.generation.send("token", token_logprob(logits, token, decoding.logprobs))
        if token in self.stop_ids:
            self.finish = "stop"
        else:
            piece = self.text.add(token)
            if piece:
                self.generation.send("text", piece)
            if self.text.stopped:
                self.finish = "stop"
        if self.finish is None and self.new_tokens >= decoding.max_new_tokens:
            self.finish = "length"

    def summary(self) -> dict[str, Any]:
        g = self.generation
        first = self.first_token_at or time.perf_counter()
        return {"text": self.text.text, "finish_reason": self.finish, "prompt_tokens": len(g.prompt_ids),
                "cached_tokens": self.cached_tokens,
                "generated_tokens": self.new_tokens,
                "time_to_first_token_ms": round(1000 * (first - g.submitted), 1),
                "seconds": round(time.perf_counter() - g.submitted, 4)}


class ContinuousBatcher:
    """Runs generations on `decoder` on its own thread, at most `max_batch` at a time; more wait in arrival order.
    `on_finished(summary)` is called on the engine thread as each generation ends, its client still there or not,
    and `on_schedule(running, waiting)` whenever those numbers change (the service reports both on /metrics)."""

    def __init__(self, decoder: BatchDecoder, tokenizer, stop_ids: set[int], max_batch: int = 16,
                 prefix_cache_bytes: int = 64 << 20, on_finished: Callable[[dict[str, Any]], None] | None = None,
                 on_schedule: Callable[[int, int], None] | None = None) -> None:
        self.decoder, self.tokenizer, self.max_batch = decoder, tokenizer, max_batch
        self.on_finished, self.on_schedule = on_finished, on_schedule
        self._scheduled = (0, 0)
        self.stop_ids = set(stop_ids)
        self.prefixes = PrefixCache(prefix_cache_bytes)
        self.incoming: queue.Queue[Generation] = queue.Queue()
        self.running: list[_Running] = []
        self.steps = 0  # decode forward passes so far
        self.batched_rows = 0  # rows summed over those passes (mean batch = batched_rows / steps)
        self._thread = threading.Thread(target=self._loop, name="continuous-batcher", daemon=True)
        self._thread.start()

    def submit(self, generation: Generation) -> None:
        self.incoming.put(generation)

    @property
    def active(self) -> int:
        return len(self.running) + self.incoming.qsize()

    @property
    def waiting(self) -> int:
        return self.incoming.qsize()

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
        self._report()
        if self.running:
            self._decode_step()
            self._drop_finished()
        self._report()

    def _report(self) -> None:
        now = (len(self.running), self.incoming.qsize())
        if self.on_schedule is not None and now != self._scheduled:
            self._scheduled = now
            self.on_schedule(*now)

    def _fail_all(self, message: str) -> None:
        for row in self.running:
            row.generation.send("error", message)
        self.running = []
        self.decoder.keep([])

    def _admit(self, generations: list[Generation]) -> None:
        """Prefill the prompts that arrived together in one forward pass, which also gives each its first token, and
        join them to the running batch. Prompts that start like a cached one resume from that cache instead; a
        prompt whose logprobs are echoed is prefilled alone: its logits at every position are (length x vocabulary)
        large."""
        rows = []
        for generation in generations:
            row = _Running(generation, self.tokenizer, self.stop_ids)
            if generation.cancelled.is_set():  # its client left while it waited
                row.finish = "cancelled"
                self._done(row)
            else:
                rows.append(row)
        fresh, resumed = [], {}
        for row in rows:
            found = None if row.generation.decoding.echo else self.prefixes.longest(row.generation.prompt_ids)
            if found is None:
                fresh.append(row)
            else:  # those resuming the same cache at the same point with as many tokens to go, in one pass
                cached, length = found
                key = (id(cached), length, len(row.generation.prompt_ids))
                resumed.setdefault(key, (found, []))[1].append(row)
        prefilled = [self._prefill(group, found) for found, group in resumed.values()]
        plain = [r for r in fresh if not r.generation.decoding.echo]
        for group in ([plain] if plain else []) + [[r] for r in fresh if r.generation.decoding.echo]:
            prefilled.append(self._prefill(group))
        prefilled = [p for p in prefilled if p is not None]
        if prefilled:  # joined at once: each join copies the running rows' cache
            self.decoder.join([cache for cache, _ in prefilled])
            self.running += [row for _, group in prefilled for row in group]

    @torch.inference_mode()
    def _prefill(self, rows: list[_Running],
                 cached: tuple[Any, int] | None = None) -> tuple[Any, list[_Running]] | None:
        """The rows' prompts through the model (after `cached`, a prefix cache hit, when given), their first tokens
        taken; their cache and the rows, or None when the model failed (the rows are told)."""
        echo = rows[0].generation.decoding.echo
        prompts = [r.generation.prompt_ids for r in rows]
        try:
            if cached is None:
                logits, cache = self.decoder.prefill(prompts, every_position=echo)
            else:
                logits, cache = self.decoder.resume(*cached, prompts)
                for row in rows:
                    row.cached_tokens = cached[1]
            for i, (row, row_logits) in enumerate(zip(rows, logits, strict=True)):
                decoding = row.generation.decoding
                if echo:
                    row.generation.send("prompt", prompt_logprobs(row_logits, row.generation.prompt_ids,
                                                                  decoding.logprobs or 0))
                if self.prefixes.max_bytes and prompts[i] not in self.prefixes:
                    self.prefixes.add(prompts[i], *self.decoder.cached_row(cache, i))
                if row.finish is None:
                    row.take(row_logits[-1])
        except Exception as exc:  # noqa: BLE001 - report to the callers, keep serving the others
            for row in rows:
                row.generation.send("error", f"{type(exc).__name__}: {exc}")
            return None
        return cache, rows

    @torch.inference_mode()
    def _decode_step(self) -> None:
        logits = self.decoder.step([row.last for row in self.running])
        self.steps += 1
        self.batched_rows += len(self.running)
        for i, row in enumerate(self.running):
            row.take(logits[i])

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
        if len(keep) < len(self.running):
            self.running = [self.running[i] for i in keep]
            self.decoder.keep(keep)


def stop_token_ids(configured: int | list[int] | None, tokenizer) -> set[int]:
    """The tokenizer's end-of-text token and every end token the model's config names (`eos_token_id`)."""
    configured = configured if isinstance(configured, list) else [configured]
    return {int(i) for i in (tokenizer.eos_token_id, *configured) if i is not None}
