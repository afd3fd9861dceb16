"""A generator checkpoint put to work: the verified model and tokenizer on a runtime, prompts (text, token ids or
chat messages) checked against the limits, and generations run by the continuous batcher, delivered to asyncio
callers as streams of events."""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from pathlib import Path
from typing import Any

from serving.continuous_batching import ContinuousBatcher, Generation, stop_token_ids
from serving.decoding import Decoding
from serving.refusal import Refused
from training.checkpoint import CheckpointManifest, load_tokenizer, read_manifest, verify_file
from training.tasks.specs.generator import SPEC

DECODER_FILE, RUNTIMES = SPEC.onnx_file, SPEC.runtimes  # read from the spec: serving needs no exporter code


class _LoopRelay:
    """Events from the engine thread into one event loop's queues, waking the loop once for the events that arrive
    together (a decode step has one per running sequence): waking it once per event took the engine thread 5% of
    its time with 8 streams, each wake-up a write to the loop's socket."""

    _relays: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopRelay] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.lock = loop, threading.Lock()
        self.pending: list[tuple[asyncio.Queue, Any]] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _LoopRelay:
        if loop not in cls._relays:
            cls._relays[loop] = cls(loop)
        return cls._relays[loop]

    def put(self, queue: asyncio.Queue, event: Any) -> None:
        """From any thread; raises RuntimeError once the loop is closed, as call_soon_threadsafe does."""
        if self.loop.is_closed():
            raise RuntimeError("Event loop is closed")
        with self.lock:
            self.pending.append((queue, event))
            wake = len(self.pending) == 1
        if wake:
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, []
        for queue, event in pending:
            queue.put_nowait(event)


class GenerationStream:
    """One generation's events, as an async iterator of (kind, payload) (see serving.continuous_batching.Generation;
    an "error" event raises RuntimeError). The generation holds its place among `max_concurrent` from its
    creation until its last event is read or the stream is closed; closing it early cancels the generation at the
    next token."""

    def __init__(self, runtime: TextGenerator, ids: list[int], decoding: Decoding) -> None:
        relay = _LoopRelay.of(asyncio.get_running_loop())
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._runtime, self._open = runtime, True
        self.generation = Generation(ids, decoding, lambda kind, payload: relay.put(self._events, (kind, payload)))
        runtime.batcher.submit(self.generation)

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> tuple[str, Any]:
        if not self._open:
            raise StopAsyncIteration
        try:
            kind, payload = await self._events.get()
        except BaseException:  # the caller was cancelled while waiting
            self.close()
            raise
        if kind == "error":
            self.close()
            raise RuntimeError(f"generation failed: {payload}")
        if kind == "done":
            self.close()
        return kind, payload

    def close(self) -> None:
        if self._open:
            self._open = False
            self._runtime.streams -= 1
            self.generation.cancel()  # a no-op once it is done

    async def aclose(self) -> None:
        self.close()


class TextGenerator:
    """`runtime`: onnx (the exported decoder.onnx, ONNX Runtime) or torch; default: onnx where the checkpoint has
    the decoder, torch otherwise. `threads` decoding, by default every core on onnx and every core but one on torch.
    Measured on 2 cores with SmolLM2 over HTTP: onnx made 56.6 tokens/s one stream and 136 with 8 at once with 2
    threads, 39.9 and 85 with 1; torch 11.5 and 38.5 with 1 thread, 8.7 and 37.7 with 2, its HTTP side and its
    decoding threads preempting each other."""

    def __init__(self, ckpt: Path | str, runtime: str | None = None, max_batch: int = 16, max_concurrent: int = 32,
                 max_prompt_tokens: int = 512, threads: int | None = None, prefix_cache_mb: int = 64,
                 on_finished=None, on_schedule=None) -> None:
        ckpt = Path(ckpt)
        manifest = read_manifest(ckpt)
        if manifest.task != "generator":
            raise ValueError(f"{ckpt}: a {manifest.task} checkpoint, not a generator")
        runtime = runtime or ("onnx" if DECODER_FILE in manifest.files else "torch")
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown generator runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
        self.tokenizer = load_tokenizer(ckpt, manifest, manifest.preprocessing["tokenizer_dir"])
        self.manifest, self.name, self.runtime = manifest, ckpt.resolve().name, runtime
        hf_config = manifest.model["hf_config"]
        self.context = int(hf_config.get("n_positions") or hf_config["max_position_embeddings"])
        cores = os.cpu_count() or 1
        if runtime == "onnx":
            self.decoder = _onnx_decoder(ckpt, manifest, threads or cores)
        else:
            self.decoder = _torch_decoder(ckpt, threads or max(1, cores - 1))
        self.end_of_turn = end_of_turn_token(self.tokenizer)
        self.max_concurrent, self.max_prompt_tokens = max_concurrent, max_prompt_tokens
        self.streams = 0  # generations admitted whose caller has not had their last event or left
        self.batcher = ContinuousBatcher(self.decoder, self.tokenizer, stop_token_ids(hf_config.get("eos_token_id"),
                                                                                      self.tokenizer),
                                         max_batch=max_batch, prefix_cache_bytes=prefix_cache_mb << 20,
                                         on_finished=on_finished, on_schedule=on_schedule)

    # --- prompts ---
    def encode(self, prompt: str | list[int], max_new_tokens: int, field: str = "prompt",
               budget_field: str = "max_new_tokens") -> list[int]:
        """Token ids of a prompt given as text or as ids, within the prompt and context limits (a refusal names
        `field` for the prompt, `budget_field` for the new tokens asked for)."""
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        else:
            ids = list(prompt)
            vocabulary = len(self.tokenizer)
            if any(not 0 <= i < vocabulary for i in ids):
                raise Refused(f"token ids must lie in [0, {vocabulary})", ["body", field])
        if not ids:  # an empty text starts a new document, as GPT-2's API does
            ids = [self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None
                   else self.tokenizer.eos_token_id]
        if len(ids) > self.max_prompt_tokens:
            raise Refused(f"the prompt is {len(ids)} tokens; at most {self.max_prompt_tokens}", ["body", field],
                          code="context_length_exceeded")
        if len(ids) + max_new_tokens > self.context:
            raise Refused(f"{len(ids)} prompt tokens + {max_new_tokens} new tokens exceed the model's context of "
                          f"{self.context} tokens", ["body", budget_field], code="context_length_exceeded")
        return ids

    def chat_prompt(self, messages: list[dict[str, str]], max_new_tokens: int) -> list[int]:
        """The conversation rendered by the tokenizer's chat template, ready for the assistant's turn."""
        if not self.tokenizer.chat_template:
            raise Refused(f"the model {self.name!r} has no chat template (a model trained from scratch); use "
                          f"/v1/completions", ["body", "messages"])
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.encode(text, max_new_tokens, field="messages", budget_field="max_tokens")

    # --- generations ---
    def open(self, requests: list[tuple[list[int], Decoding]]) -> list[GenerationStream]:
        """Start generations together, all or none: refused with 429 unless there is a place for each."""
        if self.streams + len(requests) > self.max_concurrent:
            raise Refused(f"{self.max_concurrent} generations are running at most and {self.streams} are; try again "
                          f"shortly", ["body", "prompt"], status=429, code="rate_limit_exceeded")
        self.streams += len(requests)
        return [GenerationStream(self, ids, decoding) for ids, decoding in requests]

    def stream(self, prompt: str, decoding: Decoding) -> GenerationStream:
        """The events of one generation for a text prompt."""
        return self.open([(self.encode(prompt, decoding.max_new_tokens), decoding)])[0]

    async def generate(self, prompt: str, decoding: Decoding) -> dict[str, Any]:
        stream = self.stream(prompt, decoding)
        try:
            async for kind, payload in stream:
                if kind == "done":
                    return payload
        finally:
            stream.close()
        raise RuntimeError("the generation ended without a result")


def _torch_decoder(ckpt: Path, threads: int):
    import torch

    from serving.torch_decoder import TorchDecoder
    from training.models import load_model

    torch.set_num_threads(threads)
    return TorchDecoder(load_model(ckpt)[1])


def _onnx_decoder(ckpt: Path, manifest: CheckpointManifest, threads: int | None):
    from serving.onnx_decoder import OnnxDecoder

    if DECODER_FILE not in manifest.files:
        raise ValueError(f"{ckpt / DECODER_FILE}: missing; run `modelyard export {ckpt}` first or use the torch "
                         f"runtime")
    verify_file(ckpt, manifest, DECODER_FILE + ".data")
    return OnnxDecoder(verify_file(ckpt, manifest, DECODER_FILE), threads)


def end_of_turn_token(tokenizer) -> int | None:
    """The special token the chat template closes a turn with (SmolLM2's <|im_end|>): found by rendering an
    assistant turn and reading what follows its text. None without a template or such a token."""
    if not tokenizer.chat_template:
        return None
    marker = "Zq7"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": marker}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render a plain turn has no end token to learn
        return None
    after = text[text.rfind(marker) + len(marker):]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    return ids[0] if ids and ids[0] in set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder) \
        else None

