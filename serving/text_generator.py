"""A generator checkpoint put to work: the verified model and tokenizer, prompts checked against the limits, and
generations run by the continuous batcher, delivered to asyncio callers as events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from serving.continuous_batching import ContinuousBatcher, Generation
from serving.decoding import Decoding
from training.checkpoint import load_checkpoint, load_tokenizer
from training.models import build_model
from training.models.causal_lm import context_length


class GenerationRefused(ValueError):
    """A request the model cannot take (a prompt too long, too many generations running); `field` names the part
    of the request, `status` the HTTP status that fits."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field, self.status = field, status


class TextGenerator:
    def __init__(self, ckpt: Path | str, max_batch: int = 16, max_concurrent: int = 32,
                 max_prompt_tokens: int = 512, on_finished: Callable[[dict[str, Any]], None] | None = None) -> None:
        manifest, weights = load_checkpoint(Path(ckpt))
        if manifest.task != "generator":
            raise ValueError(f"{ckpt}: a {manifest.task} checkpoint, not a generator")
        self.tokenizer = load_tokenizer(Path(ckpt), manifest, manifest.preprocessing["tokenizer_dir"])
        model = build_model(manifest.model)
        model.load_state_dict(weights)
        self.model = model.eval()
        self.manifest = manifest
        self.context = context_length(model)
        self.max_concurrent, self.max_prompt_tokens = max_concurrent, max_prompt_tokens
        self.streams = 0  # generations admitted whose caller has not had their last event or left
        self.batcher = ContinuousBatcher(self.model, self.tokenizer, max_batch=max_batch,
                                         on_finished=on_finished)

    def encode(self, prompt: str, max_new_tokens: int) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise GenerationRefused("prompt", "the prompt encodes to no tokens")
        if len(ids) > self.max_prompt_tokens:
            raise GenerationRefused("prompt", f"the prompt is {len(ids)} tokens; at most {self.max_prompt_tokens}")
        if len(ids) + max_new_tokens > self.context:
            raise GenerationRefused("max_new_tokens", f"{len(ids)} prompt tokens + {max_new_tokens} new tokens "
                                                      f"exceed the model's context of {self.context} tokens")
        return ids

    async def stream(self, prompt: str, decoding: Decoding) -> AsyncIterator[tuple[str, Any]]:
        """("text", piece) events as the text is decoded, then ("done", summary). Leaving the iteration early (a
        client that went away) cancels the generation at the next token."""
        ids = self.encode(prompt, decoding.max_new_tokens)
        # Places are counted here, on the event loop, from admission to the last event: the batcher's own count
        # lags while it prefills (a row joins `running` after its first token is out).
        if self.streams >= self.max_concurrent:
            raise GenerationRefused("prompt", f"{self.max_concurrent} generations are running; try again shortly",
                                    status=429)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        generation = Generation(ids, decoding, lambda kind, payload: loop.call_soon_threadsafe(
            events.put_nowait, (kind, payload)))
        self.streams += 1
        try:
            self.batcher.submit(generation)
            while True:
                kind, payload = await events.get()
                if kind == "error":
                    raise RuntimeError(f"generation failed: {payload}")
                yield kind, payload
                if kind == "done":
                    return
        finally:
            self.streams -= 1
            generation.cancel()  # a no-op once it is done

    async def generate(self, prompt: str, decoding: Decoding) -> dict[str, Any]:
        async with contextlib.aclosing(self.stream(prompt, decoding)) as events:  # frees the place on return
            async for kind, payload in events:
                if kind == "done":
                    return payload
        raise RuntimeError("the generation ended without a result")
