"""The text generator API as a BentoML service.

POST /generate answers the whole text with token counts and why it ended (`stop`: an end token or a stop string,
`length`: max_new_tokens reached); POST /generate/stream sends server-sent events as the text is decoded (`event:
text` with `{"text": piece}`, then `event: done` with the same summary). Concurrent requests are decoded together
in one running batch (serving.continuous_batching); a client that disconnects stops its generation. Refusals are
HTTP 4xx in one shape, `{"error", "detail": [{"type", "loc", "msg"}]}`: bad parameters or a prompt beyond the
token limit (400), a body too large (413), too many generations at once (429), another Content-Type (415).
The routes are FastAPI routes mounted in the service, because a stream must be able to refuse with a status before
its first event. BentoML's /metrics adds `modelyard_generations_total{finish_reason}` (stop, length, cancelled),
`modelyard_generated_tokens_total` and `modelyard_time_to_first_token_seconds`. Settings: MODELYARD_CHECKPOINT and
the OPTIONS below.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.openapi import VALIDATION_ERROR_BODY, as_openapi30, document_truthfully
from serving.settings import read_settings
from training.options import Option

SERVICE, ROUTE = "TextGenerator", "/generate"
RUNTIMES = ("torch",)  # decoding with a KV cache, batched across requests: torch, not an ONNX graph
OPTIONS = (Option("max_new_tokens", int, 256, "most tokens one request may ask for", minimum=1),
           Option("max_prompt_tokens", int, 512, "most tokens in a prompt", minimum=1),
           Option("max_concurrent", int, 32, "generations running or waiting at once; more get HTTP 429", minimum=1),
           Option("max_batch", int, 16, "sequences decoded together in one forward pass", minimum=1),
           # Measured on 2 cores, SmolLM2, 8 streams: 53.6 tokens/s with 1 thread, 38.7 with 2, where the HTTP side
           # and the decoding threads preempt each other; one stream decodes as fast with 1 as with 2.
           Option("threads", int, max(1, (os.cpu_count() or 1) - 1),
                  "torch threads decoding (default: every core but one, left to the HTTP side)", minimum=1))
SETTINGS = read_settings(OPTIONS)
MAX_NEW = SETTINGS["max_new_tokens"]
MAX_BODY = 64_000


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=20_000, description="text to continue")
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW, strict=True)
    temperature: float = Field(0.8, ge=0, le=5, allow_inf_nan=False, strict=True,
                               description="below 0.01: greedy decoding")
    top_k: int = Field(50, ge=0, le=1000, strict=True, description="0: no top-k cut")
    top_p: float = Field(0.95, gt=0, le=1, allow_inf_nan=False, strict=True)
    repetition_penalty: float = Field(1.1, ge=1, le=10, allow_inf_nan=False, strict=True)
    stop: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(
        default_factory=list, max_length=4, description="strings that end the text (not included)")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, strict=True,
                             description="makes sampling reproducible; null: a fresh draw")


class Generated(BaseModel):
    text: str = Field(description="the generated continuation (without the prompt)")
    finish_reason: str = Field(description="stop (an end token or stop string), length (max_new_tokens) or "
                                           "cancelled")
    prompt_tokens: int
    generated_tokens: int
    time_to_first_token_ms: float


class Refused(Exception):
    def __init__(self, status: int, kind: str, loc: list[Any], message: str) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": message, "detail": [{"type": kind, "loc": loc, "msg": message}]}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status)


app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)  # BentoML serves the one document, /docs.json

ERROR = {"content": {"application/json": {"schema": VALIDATION_ERROR_BODY}}}
ERRORS = {400: {"description": "Bad Request: a parameter out of range, or a prompt beyond the token limit", **ERROR},
          413: {"description": "Content Too Large: the body is larger than allowed", **ERROR},
          415: {"description": "Unsupported Media Type", **ERROR},
          429: {"description": "Too Many Requests: max_concurrent generations are running", **ERROR}}
REQUEST_BODY = {"required": True, "content": {"application/json": {"schema": as_openapi30(
    GenerateRequest.model_json_schema())}}}
STREAM_ANSWER = {200: {"description": "server-sent events: `event: text` (data `{\"text\": piece}`) as the text is "
                                      "decoded, then `event: done` (data: the Generated summary)",
                       "content": {"text/event-stream": {"schema": {
                           "type": "object", "required": ["event", "data"], "properties": {
                               "event": {"type": "string", "enum": ["text", "done"]},
                               "data": {"type": "string", "description": "JSON: {\"text\": piece} for text, the "
                                                                         "Generated summary for done"}}}}}}}


@document_truthfully
@bentoml.service(name="text_generator", workers=1, traffic={"timeout": 300})
@bentoml.asgi_app(app, path="/")
class TextGenerator:
    def __init__(self) -> None:
        import torch

        from serving.text_generator import TextGenerator as Runtime

        torch.set_num_threads(SETTINGS["threads"])
        self.runtime = Runtime(os.environ["MODELYARD_CHECKPOINT"], max_batch=SETTINGS["max_batch"],
                               max_concurrent=SETTINGS["max_concurrent"],
                               max_prompt_tokens=SETTINGS["max_prompt_tokens"], on_finished=_metrics())

    @app.post("/generate", response_model=Generated, openapi_extra={"requestBody": REQUEST_BODY}, responses=ERRORS,
              summary="Generate text", description="The continuation of `prompt`, whole.")
    async def generate(self, request: Request) -> Any:
        from serving.text_generator import GenerationRefused

        try:
            body = await _request(request)
            return await self.runtime.generate(body.prompt, _decoding(body))
        except GenerationRefused as exc:
            return Refused(exc.status, "refused", ["body", exc.field], str(exc)).response()
        except Refused as exc:
            return exc.response()

    @app.post("/generate/stream", openapi_extra={"requestBody": REQUEST_BODY}, responses={**STREAM_ANSWER, **ERRORS},
              summary="Generate text, streamed", description="Server-sent events as the continuation is decoded.")
    async def generate_stream(self, request: Request) -> Any:
        from serving.text_generator import GenerationRefused

        try:
            body = await _request(request)
            events = self.runtime.stream(body.prompt, _decoding(body))
            first = await anext(events)  # refusals surface here, while a status can still be sent
        except GenerationRefused as exc:
            return Refused(exc.status, "refused", ["body", exc.field], str(exc)).response()
        except Refused as exc:
            return exc.response()

        async def sse():
            try:
                yield _event(*first)
                async for event in events:
                    yield _event(*event)
            finally:
                await events.aclose()  # the client went away: stop decoding for it

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _metrics():
    """Counters for BentoML's /metrics, made in the worker: prometheus_client must be imported after BentoML has set
    its multiprocess directory, or the values never reach /metrics."""
    import prometheus_client as prom

    finished = prom.Counter("modelyard_generations", "generations ended, by finish_reason", ["finish_reason"])
    tokens = prom.Counter("modelyard_generated_tokens", "tokens generated")
    first = prom.Histogram("modelyard_time_to_first_token_seconds", "from arrival to the first token",
                           buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    def count(summary: dict[str, Any]) -> None:
        finished.labels(summary["finish_reason"]).inc()
        tokens.inc(summary["generated_tokens"])
        if summary["generated_tokens"]:
            first.observe(summary["time_to_first_token_ms"] / 1000)

    return count


async def _request(request: Request) -> GenerateRequest:
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        raise Refused(413, "too_large", ["body"], f"the request body is larger than {MAX_BODY:,} bytes")
    try:
        return GenerateRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors(include_context=False, include_input=False, include_url=False)[0]
        raise Refused(400, first["type"], ["body", *first["loc"]], first["msg"]) from None


def _decoding(body: GenerateRequest):
    from serving.decoding import Decoding

    return Decoding(max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_k=body.top_k,
                    top_p=body.top_p, repetition_penalty=body.repetition_penalty, stop=tuple(body.stop),
                    seed=body.seed)


def _event(kind: str, payload: Any) -> str:
    data = {"text": payload} if kind == "text" else payload
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"
