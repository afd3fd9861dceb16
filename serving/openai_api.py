"""OpenAI's HTTP API for the text generator: /v1/models, /v1/completions and /v1/chat/completions, the protocol that
the openai SDK, LangChain, LlamaIndex, lm-eval and chat front ends speak (vLLM, TGI, llama.cpp and Ollama serve it).

Requests are validated here (OpenAI's fields, plus vLLM's `top_k` and `repetition_penalty`); every choice of every
request becomes one generation of the continuous batcher, so all shapes share one running batch. Answers and
streamed chunks take OpenAI's shapes; refusals take OpenAI's error body, `{"error": {"message", "type", "param",
"code"}}`, so the SDK raises its typed exceptions. Log-probabilities come from the model's own distribution.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.decoding import Decoding, TokenLogprob
from serving.refusal import Refused
from serving.text_generator import GenerationStream, TextGenerator

MAX_N = 8  # choices per prompt
MAX_PROMPTS = 16  # prompts per completion request
MAX_LOGPROBS = 5  # alternatives per token, as OpenAI's API allows
MAX_BODY = 1_000_000

StopStrings = Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=4)]
PromptText = Annotated[str, Field(max_length=100_000)]
TokenIds = Annotated[list[Annotated[int, Field(strict=True, ge=0, title="TokenId")]], Field(min_length=1)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(False, strict=True, description="a last chunk with the request's token usage")


class Sampling(BaseModel):
    """The fields completions and chat share."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a served model id (GET /v1/models)")
    temperature: float = Field(1.0, ge=0, le=2, strict=True, allow_inf_nan=False,
                               description="below 0.01: greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1, strict=True, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=MAX_N, strict=True, description="choices to generate for each prompt")
    stream: bool = Field(False, strict=True, description="send server-sent chunks as the text is decoded")
    stream_options: StreamOptions | None = None
    stop: str | StopStrings | None = Field(None, description="up to 4 strings that end the text (not included)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, strict=True,
                             description="makes sampling reproducible; choice i of a request draws with seed + i")
    presence_penalty: float = Field(0.0, ge=-2, le=2, strict=True, allow_inf_nan=False)
    frequency_penalty: float = Field(0.0, ge=-2, le=2, strict=True, allow_inf_nan=False)
    top_k: int = Field(0, ge=-1, le=1000, strict=True, description="extension (as vLLM): 0 or -1: no top-k cut")
    repetition_penalty: float = Field(1.0, gt=0, le=10, strict=True, allow_inf_nan=False,
                                      description="extension (as vLLM): above 1 discourages repeating any seen token")
    user: str | None = Field(None, max_length=256, description="accepted and ignored")

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(Sampling):
    prompt: PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=MAX_PROMPTS)] | TokenIds | \
        Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)] = Field(
        description="a text, a list of texts, a list of token ids, or a list of such lists: one set of `n` choices "
                    "per prompt")
    max_tokens: int | None = Field(16, ge=0, strict=True,
                                   description="new tokens at most; 0 with `echo` scores the prompt only")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, strict=True,
                                 description="each token's log-probability and this many most likely alternatives")
    echo: bool = Field(False, strict=True, description="return the prompt before the completion (and its tokens' "
                                                        "log-probabilities with `logprobs`)")
    best_of: int | None = Field(None, ge=1, le=1, strict=True, description="only 1 (or null) is supported")

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, Field(max_length=100_000)] | Annotated[list[TextPart], Field(max_length=64)]
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, strict=True, description="new tokens at most (default: the server's "
                                                                         "limit)")
    max_completion_tokens: int | None = Field(None, ge=1, strict=True, description="the same as max_tokens")
    logprobs: bool = Field(False, strict=True, description="each generated token's log-probability")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, strict=True,
                                     description="this many most likely alternatives per token (needs logprobs)")


# --- errors ---------------------------------------------------------------------------------------------------------

ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               413: "invalid_request_error", 415: "invalid_request_error", 429: "rate_limit_error",
               500: "server_error"}


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


ERROR_BODY = {"type": "object", "title": "OpenAIError", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": "string", "nullable": True, "description": "the request field at fault"},
        "code": {"type": "string", "nullable": True}}}}}


def parse(model: type[BaseModel], raw: bytes, content_length: str | None) -> Any:
    if int(content_length or 0) > MAX_BODY or len(raw) > MAX_BODY:
        raise OpenAIError(413, f"the request body is larger than {MAX_BODY:,} bytes", code="request_too_large")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_context=False, include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"] if not _is_union_branch(part))
        raise OpenAIError(400, f"{where or 'body'}: {first['msg']}", param=where or None,
                          code=first["type"]) from None


def _is_union_branch(part: Any) -> bool:
    """pydantic names the union member it tried in an error's location (`str`, `list[...]`, `function-after[...]`)."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "list", "bool", "float"))


def refused(exc: Refused) -> OpenAIError:
    return OpenAIError(exc.status, str(exc), param=exc.field, code=exc.code)


# --- the API ----------------------------------------------------------------------------------------------------------

class OpenAIServer:
    """The three routes' logic over one TextGenerator; `model_ids`: the ids it answers to, the first its name."""

    def __init__(self, runtime: TextGenerator, model_ids: list[str], max_new_tokens: int, created: int) -> None:
        self.runtime, self.model_ids = runtime, model_ids
        self.max_new_tokens, self.created = max_new_tokens, created

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": self.created,
                                            "owned_by": "modelyard"} for name in self.model_ids]}

    def _check_model(self, model: str) -> None:
        if model not in self.model_ids:
            raise OpenAIError(404, f"the model {model!r} does not exist; this server has "
                                   f"{', '.join(repr(m) for m in self.model_ids)}", param="model",
                              code="model_not_found")

    def _max_tokens(self, asked: int | None) -> int:
        if asked is None:
            return self.max_new_tokens
        if asked > self.max_new_tokens:
            raise OpenAIError(400, f"max_tokens: at most {self.max_new_tokens} new tokens per choice",
                              param="max_tokens", code="invalid_value")
        return asked

    def _decodings(self, body: Sampling, max_tokens: int, logprobs: int | None, echo: bool,
                   stop_ids: tuple[int, ...] = ()) -> list[Decoding]:
        return [Decoding(max_new_tokens=max_tokens, temperature=body.temperature, top_k=max(body.top_k, 0),
                         top_p=body.top_p, repetition_penalty=body.repetition_penalty,
                         presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                         stop=body.stops(), stop_token_ids=stop_ids,
                         seed=None if body.seed is None else (body.seed + i) % 2**63,
                         logprobs=logprobs, echo=echo) for i in range(body.n)]

    # --- /v1/completions ---
    def completions(self, body: CompletionRequest) -> tuple[Any, bool]:
        """An awaitable of the whole answer, or an async iterator of SSE lines; and whether it streams."""
        self._check_model(body.model)
        max_tokens = self._max_tokens(body.max_tokens)
        if max_tokens == 0 and not body.echo:
            raise OpenAIError(400, "max_tokens: 0 generates nothing; it is allowed with echo (to score the prompt)",
                              param="max_tokens", code="invalid_value")
        prompts = body.prompts()
        try:
            encoded = [self.runtime.encode(p, max_tokens, budget_field="max_tokens") for p in prompts]
            decodings = self._decodings(body, max_tokens, body.logprobs, body.echo)
            streams = self.runtime.open([(ids, d) for ids in encoded for d in decodings])
        except Refused as exc:
            raise refused(exc) from None
        texts = [p if isinstance(p, str) else self.runtime.tokenizer.decode(p) for p in prompts]
        choices = [_Choice(i, encoded[i // body.n], texts[i // body.n] if body.echo else "", body.logprobs)
                   for i in range(len(streams))]
        return _Reply("cmpl", False, body.model, self.runtime.tokenizer).answer(body, streams, choices)

    # --- /v1/chat/completions ---
    def chat(self, body: ChatCompletionRequest) -> tuple[Any, bool]:
        self._check_model(body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise OpenAIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
        max_tokens = self._max_tokens(body.max_completion_tokens or body.max_tokens)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        stop_ids = (self.runtime.end_of_turn,) if self.runtime.end_of_turn is not None else ()
        try:
            ids = self.runtime.chat_prompt(messages, max_tokens)
            logprobs = (body.top_logprobs or 0) if body.logprobs else None
            streams = self.runtime.open([(ids, d) for d in self._decodings(body, max_tokens, logprobs, False,
                                                                            stop_ids)])
        except Refused as exc:
            raise refused(exc) from None
        choices = [_Choice(i, ids, "", logprobs) for i in range(len(streams))]
        return _Reply("chatcmpl", True, body.model, self.runtime.tokenizer).answer(body, streams, choices)


class _Choice:
    """What one choice has gathered: its text, tokens with log-probabilities, and how it ended."""

    def __init__(self, index: int, prompt_ids: list[int], echoed: str, logprobs: int | None) -> None:
        self.index, self.prompt_ids, self.echoed, self.logprobs = index, prompt_ids, echoed, logprobs
        self.text, self.tokens = "", []
        self.pending: list[TokenLogprob] = []  # tokens whose log-probabilities no chunk has carried yet
        self.offset = 0  # where the next pending token starts in the choice's text (echo included)
        self.finish_reason: str | None = None
        self.generated = 0
        self.cached = 0  # prompt tokens the server took from its prefix cache

    def take(self, kind: str, payload: Any) -> str:
        """Record an event; the text it releases."""
        if kind in ("prompt", "token"):
            tokens = payload if kind == "prompt" else [payload]
            self.tokens += tokens
            self.pending += tokens
        elif kind == "text":
            self.text += payload
            return payload
        elif kind == "done":
            self.finish_reason = "stop" if payload["finish_reason"] == "stop" else "length"
            self.generated = payload["generated_tokens"]
            self.cached = payload["cached_tokens"]
        return ""

    def flush(self) -> list[TokenLogprob]:
        tokens, self.pending = self.pending, []
        return tokens


class _Reply:
    """Builds one request's answer in OpenAI's shapes."""

    def __init__(self, prefix: str, chat: bool, model: str, tokenizer: Any) -> None:
        self.id, self.chat = f"{prefix}-{uuid.uuid4().hex}", chat
        self.created, self.model, self.tokenizer = int(time.time()), model, tokenizer

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    @staticmethod
    def _usage(choices: list[_Choice]) -> dict[str, Any]:
        prompts = {id(c.prompt_ids): c for c in choices}  # the n choices of one prompt share it
        prompt = sum(len(c.prompt_ids) for c in prompts.values())
        completion = sum(c.generated for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": sum(c.cached for c in prompts.values())}}

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def _logprobs(self, choice: _Choice, tokens: list[TokenLogprob]) -> dict[str, Any] | None:
        """Completions: parallel lists with each token's offset in the choice's text; chat: one entry per token."""
        if choice.logprobs is None:
            return None
        if self.chat:
            def entry(token: int, logprob: float) -> dict[str, Any]:
                piece = self._piece(token)
                return {"token": piece, "logprob": logprob, "bytes": list(piece.encode())}

            return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]}
                                for t in tokens]}
        pieces, offsets = [self._piece(t.token) for t in tokens], []
        for piece in pieces:
            offsets.append(choice.offset)
            choice.offset += len(piece)
        return {"tokens": pieces, "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [None if t.logprob is None else {self._piece(i): lp for i, lp in t.top}
                                 for t in tokens], "text_offset": offsets}

    def whole(self, choices: list[_Choice]) -> dict[str, Any]:
        if self.chat:
            return {**self._head("chat.completion"), "choices": [{
                "index": c.index, "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason, "logprobs": self._logprobs(c, c.flush())} for c in choices],
                "usage": self._usage(choices)}
        return {**self._head("text_completion"), "choices": [{
            "index": c.index, "text": c.echoed + c.text, "finish_reason": c.finish_reason,
            "logprobs": self._logprobs(c, c.flush())} for c in choices], "usage": self._usage(choices)}

    def chunk(self, choice: _Choice, text: str, first: bool) -> dict[str, Any]:
        """A streamed chunk: the choice's new text, the log-probabilities of its tokens so far unsent, and its
        finish_reason once done (the first chunk of a chat choice names the role; of an echoing completion, carries
        the prompt)."""
        logprobs = self._logprobs(choice, choice.flush())
        if self.chat:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            return {**self._head("chat.completion.chunk"), "choices": [{
                "index": choice.index, "delta": delta, "finish_reason": choice.finish_reason, "logprobs": logprobs}]}
        return {**self._head("text_completion"), "choices": [{
            "index": choice.index, "text": (choice.echoed if first else "") + text,
            "finish_reason": choice.finish_reason, "logprobs": logprobs}]}

    def answer(self, body: Sampling, streams: list[GenerationStream], choices: list[_Choice]) -> tuple[Any, bool]:
        """An awaitable of the whole answer, or an async iterator of SSE lines; and whether it streams."""
        if body.stream:
            return self.stream(streams, choices, bool(body.stream_options and body.stream_options.include_usage)), True
        return self.collect(streams, choices), False

    async def collect(self, streams: list[GenerationStream], choices: list[_Choice]) -> dict[str, Any]:
        async def drain(stream: GenerationStream, choice: _Choice) -> None:
            async for kind, payload in stream:
                choice.take(kind, payload)

        try:
            await asyncio.gather(*(drain(s, c) for s, c in zip(streams, choices, strict=True)))
        finally:
            for stream in streams:
                stream.close()
        return self.whole(choices)

    async def stream(self, streams: list[GenerationStream], choices: list[_Choice], usage: bool) -> AsyncIterator[str]:
        """`data: {chunk}` lines as the choices' text is decoded, `data: [DONE]` last; leaving early (the client
        went away) cancels every choice's generation."""
        events: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()

        async def pump(i: int, stream: GenerationStream) -> None:
            try:
                async for kind, payload in stream:
                    await events.put((i, kind, payload))
            except RuntimeError as exc:
                await events.put((i, "error", str(exc)))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
        started, open_choices = set(), len(choices)
        try:
            while open_choices:
                i, kind, payload = await events.get()
                if kind == "error":
                    yield _sse({"error": {"message": payload, "type": "server_error", "param": None, "code": None}})
                    return
                text = choices[i].take(kind, payload)
                if kind in ("prompt", "token"):
                    continue  # their log-probabilities go with the text they belong to
                open_choices -= kind == "done"
                body = self.chunk(choices[i], text, i not in started)
                started.add(i)
                yield _sse({**body, "usage": None} if usage else body)
            if usage:
                yield _sse({**self._head("chat.completion.chunk" if self.chat else "text_completion"),
                            "choices": [], "usage": self._usage(choices)})
            yield "data: [DONE]\n\n"
        finally:
            for task in tasks:
                task.cancel()
            for stream in streams:
                stream.close()


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"
