"""The text generator API as a BentoML service: OpenAI's API and modelyard's own routes over one continuous batch.

OpenAI's API (serving.openai_api): GET /v1/models, POST /v1/completions and POST /v1/chat/completions, streamed as
`data: {chunk}` lines ending with `data: [DONE]`, refusals in OpenAI's error body; with the `api_key` setting, these
routes want `Authorization: Bearer KEY` (401 without it).

modelyard's own: POST /generate answers the whole text with token counts and why it ended (`stop`: an end token or
a stop string, `length`: max_new_tokens reached); POST /generate/stream sends server-sent events as the text is
decoded (`event: text` with `{"text": piece}`, then `event: done` with the same summary). Refusals are HTTP 4xx in
one shape, `{"error", "detail": [{"type", "loc", "msg"}]}`: bad parameters or a prompt beyond the token limit (400),
a body too large (413), too many generations at once (429), another Content-Type (415).

Every request of every route is decoded in one running batch (serving.continuous_batching); a client that
disconnects stops its generation. The routes are FastAPI routes mounted in the service, because a stream must be
able to refuse with a status before its first event. BentoML's /metrics adds
`modelyard_generations_total{finish_reason}` (stop, length, cancelled) and, under vLLM's names with a `modelyard:`
prefix, prompt and generated token counters, running and waiting requests, and time-to-first-token and end-to-end
latency histograms. Settings: MODELYARD_CHECKPOINT, MODELYARD_RUNTIME and the OPTIONS below.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving import openai_api as oai
from serving.openapi import VALIDATION_ERROR_BODY, as_openapi30, client_route, document_truthfully
from serving.refusal import Refused
from serving.settings import read_settings
from training.options import Option

SERVICE, ROUTE = "GeneratorService", "/v1/completions"  # OpenAI's; /v1/chat/completions and /generate too
OPTIONS = (Option("max_new_tokens", int, 256, "most tokens one request may ask for", minimum=1),
           Option("max_prompt_tokens", int, 512, "most tokens in a prompt", minimum=1),
           Option("max_concurrent", int, 32, "generations running or waiting at once; more get HTTP 429", minimum=1),
           Option("max_batch", int, 16, "sequences decoded together in one forward pass", minimum=1),
           Option("threads", int, None, "threads decoding (default: every core on the onnx runtime, every core but "
                                        "one on torch)", minimum=1),
           Option("prefix_cache_mb", int, 64, "memory for the key/value caches of recent prompts, which a prompt "
                                              "starting the same way resumes from (0: off)", minimum=0),
           Option("served_model_name", str, None, "the model id of OpenAI's API (default: the checkpoint folder's "
                                                  "name; `generator` is always an alias)"),
           Option("api_key", str, None, "when set, OpenAI's routes want `Authorization: Bearer KEY`"))
SETTINGS = read_settings(OPTIONS)
MAX_NEW = SETTINGS["max_new_tokens"]
MAX_BODY = 64_000


def served_model_ids(ckpt: str | None, name: str | None) -> list[str]:
    ids = [name or (Path(ckpt).resolve().name if ckpt else "generator"), "generator"]
    return list(dict.fromkeys(ids))


def _vocabulary(ckpt: str | None) -> int | None:
    """The served model's vocabulary size, for the document's bound on token-id prompts."""
    if not ckpt or not Path(ckpt, "manifest.json").is_file():
        return None
    return json.loads(Path(ckpt, "manifest.json").read_text())["model"]["hf_config"].get("vocab_size")


MODEL_IDS = served_model_ids(os.environ.get("MODELYARD_CHECKPOINT"), SETTINGS["served_model_name"])
VOCABULARY = _vocabulary(os.environ.get("MODELYARD_CHECKPOINT"))


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

# OpenAI's routes in the document: their bodies, the model ids this server answers to, and OpenAI's error body.
OPENAI_ERROR = {"content": {"application/json": {"schema": oai.ERROR_BODY}}}
OPENAI_ERRORS = {400: {"description": "Bad Request: a parameter out of range, a prompt beyond the context, no chat "
                                      "template", **OPENAI_ERROR},
                 401: {"description": "Unauthorized: the server has an API key and the request did not carry it",
                       **OPENAI_ERROR},
                 404: {"description": "Not Found: no model with this id", **OPENAI_ERROR},
                 413: {"description": "Content Too Large", **OPENAI_ERROR},
                 429: {"description": "Too Many Requests: max_concurrent generations are running", **OPENAI_ERROR}}
OPENAI_STREAM = {"text/event-stream": {"schema": {"type": "string", "description": "`data: {chunk}` lines, then "
                                                                                      "`data: [DONE]`"}}}


def _openai_body(model: type[BaseModel]) -> dict[str, Any]:
    """The request's schema with what this server adds to OpenAI's: its model ids, its max_tokens, its vocabulary;
    references to $defs inlined, so that each route's body stands alone."""
    schema = as_openapi30(model.model_json_schema())
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[1]])
            if node.get("type") == "integer" and node.get("title") == "TokenId" and VOCABULARY:
                node = {**node, "maximum": VOCABULARY - 1}
            return {key: walk(value) for key, value in node.items()}
        return [walk(item) for item in node] if isinstance(node, list) else node

    schema = walk(schema)
    properties = schema["properties"]
    properties["model"]["enum"] = MODEL_IDS
    for name in ("max_tokens", "max_completion_tokens"):
        if name in properties:
            properties[name]["maximum"] = MAX_NEW
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _openai_answer(kind: str) -> dict[int, Any]:
    return {200: {"description": f"the {kind}, or its chunks when `stream` is true", "content": {
        "application/json": {"schema": {"type": "object", "required": ["id", "object", "created", "model", "choices",
                                                                       "usage"]}},
        **OPENAI_STREAM}}, **OPENAI_ERRORS}


@document_truthfully
@bentoml.service(name="text_generator", workers=1, traffic={"timeout": 300})
@bentoml.asgi_app(app, path="/")
class GeneratorService:
    # BentoML's client: `client.generate(prompt=...)` answers the whole text; `client.generate_stream(prompt=...)`
    # yields the server-sent events' text as it arrives (OpenAI's routes are for OpenAI's clients)
    CLIENT_ROUTES = (
        client_route("generate", "/generate", "The continuation of `prompt`, whole",
                     GenerateRequest.model_json_schema(), Generated.model_json_schema()),
        client_route("generate_stream", "/generate/stream", "Server-sent events as the continuation is decoded",
                     GenerateRequest.model_json_schema(), {"type": "string"}, stream=True),
    )

    def __init__(self) -> None:
        from serving.text_generator import TextGenerator as Runtime

        self.metrics = _Metrics()
        checkpoint = os.environ["MODELYARD_CHECKPOINT"]
        self.runtime = Runtime(checkpoint, runtime=os.environ.get("MODELYARD_RUNTIME"),
                               max_batch=SETTINGS["max_batch"], max_concurrent=SETTINGS["max_concurrent"],
                               max_prompt_tokens=SETTINGS["max_prompt_tokens"], threads=SETTINGS["threads"],
                               prefix_cache_mb=SETTINGS["prefix_cache_mb"],
                               on_finished=self.metrics.finished, on_schedule=self.metrics.scheduled)
        self.metrics.engine.labels(self.runtime.runtime, str(self.runtime.decoder.threads),
                                   str(self.runtime.batcher.max_batch)).set(1)
        self.openai = oai.OpenAIServer(self.runtime, MODEL_IDS, MAX_NEW,
                                       created=int(Path(checkpoint, "manifest.json").stat().st_mtime))

    @app.post("/generate", response_model=Generated, openapi_extra={"requestBody": REQUEST_BODY}, responses=ERRORS,
              summary="Generate text", description="The continuation of `prompt`, whole.")
    async def generate(self, request: Request) -> Any:
        try:
            body = await _request(request)
            return await self.runtime.generate(body.prompt, _decoding(body))
        except Refused as exc:
            return exc.response()

    @app.post("/generate/stream", openapi_extra={"requestBody": REQUEST_BODY}, responses={**STREAM_ANSWER, **ERRORS},
              summary="Generate text, streamed", description="Server-sent events as the continuation is decoded.")
    async def generate_stream(self, request: Request) -> Any:
        try:
            body = await _request(request)
            events = self.runtime.stream(body.prompt, _decoding(body))
        except Refused as exc:
            return exc.response()

        async def sse():
            try:
                async for kind, payload in events:
                    if kind in ("text", "done"):
                        yield _event(kind, payload)
            finally:
                events.close()  # the client went away: stop decoding for it

        return _event_stream(sse())

    # --- OpenAI's API ---
    @app.get("/v1/models", summary="The served model (OpenAI's API)", responses={
        401: OPENAI_ERRORS[401], 200: {"description": "the models", "content": {"application/json": {"schema": {
            "type": "object", "required": ["object", "data"]}}}}})
    async def v1_models(self, request: Request) -> Any:
        try:
            _authorize(request)
            return self.openai.models()
        except oai.OpenAIError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)

    @app.post("/v1/completions", summary="Text completions (OpenAI's API)", responses=_openai_answer("completion"),
              openapi_extra={"requestBody": _openai_body(oai.CompletionRequest)})
    async def v1_completions(self, request: Request) -> Any:
        return await self._openai(request, oai.CompletionRequest, self.openai.completions)

    @app.post("/v1/chat/completions", summary="Chat completions (OpenAI's API)",
              responses=_openai_answer("chat completion"),
              openapi_extra={"requestBody": _openai_body(oai.ChatCompletionRequest)})
    async def v1_chat_completions(self, request: Request) -> Any:
        return await self._openai(request, oai.ChatCompletionRequest, self.openai.chat)

    async def _openai(self, request: Request, model: type[BaseModel], handle) -> Any:
        try:
            _authorize(request)
            answer, streams = handle(oai.parse(model, await request.body(), request.headers.get("content-length")))
            if streams:
                return _event_stream(answer)
            return await answer
        except oai.OpenAIError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)


class _Metrics:
    """Counters and histograms for BentoML's /metrics, made in the worker: prometheus_client must be imported after
    BentoML has set its multiprocess directory, or the values never reach /metrics."""

    def __init__(self) -> None:
        import prometheus_client as prom

        seconds = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.ended = prom.Counter("modelyard_generations", "generations ended, by finish_reason", ["finish_reason"])
        self.tokens = prom.Counter("modelyard_generated_tokens", "tokens generated")
        self.first = prom.Histogram("modelyard_time_to_first_token_seconds", "from arrival to the first token",
                                    buckets=seconds)
        # vLLM's names (after its `vllm:` prefix), for the dashboards and alerts written for them
        self.prompt_tokens = prom.Counter("modelyard:prompt_tokens", "prompt tokens prefilled")
        self.generation_tokens = prom.Counter("modelyard:generation_tokens", "tokens generated")
        self.prefix_queries = prom.Counter("modelyard:prefix_cache_queries", "prompt tokens looked up in the prefix "
                                                                             "cache")
        self.prefix_hits = prom.Counter("modelyard:prefix_cache_hits", "prompt tokens found in the prefix cache")
        self.running = prom.Gauge("modelyard:num_requests_running", "generations in the running batch",
                                  multiprocess_mode="livemax")
        self.waiting = prom.Gauge("modelyard:num_requests_waiting", "generations waiting for a place in the batch",
                                  multiprocess_mode="livemax")
        self.engine = prom.Gauge("modelyard:engine_config_info", "the engine's runtime, decoding threads and batch "
                                 "size, as running", ["runtime", "threads", "max_batch"], multiprocess_mode="livemax")
        self.ttft = prom.Histogram("modelyard:time_to_first_token_seconds", "from arrival to the first token",
                                   buckets=seconds)
        self.latency = prom.Histogram("modelyard:e2e_request_latency_seconds", "from arrival to the last token",
                                      buckets=seconds)

    def finished(self, summary: dict[str, Any]) -> None:
        self.ended.labels(summary["finish_reason"]).inc()
        self.tokens.inc(summary["generated_tokens"])
        self.generation_tokens.inc(summary["generated_tokens"])
        if summary["finish_reason"] != "cancelled" or summary["generated_tokens"]:
            self.prompt_tokens.inc(summary["prompt_tokens"])
            self.prefix_queries.inc(summary["prompt_tokens"])
            self.prefix_hits.inc(summary["cached_tokens"])
        if summary["generated_tokens"]:
            self.first.observe(summary["time_to_first_token_ms"] / 1000)
            self.ttft.observe(summary["time_to_first_token_ms"] / 1000)
        self.latency.observe(summary["seconds"])

    def scheduled(self, running: int, waiting: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)


def _authorize(request: Request) -> None:
    key = SETTINGS["api_key"]
    if key and request.headers.get("authorization", "") != f"Bearer {key}":
        raise oai.OpenAIError(401, "this server wants an API key: send `Authorization: Bearer KEY`",
                              code="invalid_api_key")


async def _request(request: Request) -> GenerateRequest:
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        raise Refused(f"the request body is larger than {MAX_BODY:,} bytes", status=413, kind="too_large")
    try:
        return GenerateRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise Refused.first_of(exc, ["body"]) from None


def _decoding(body: GenerateRequest):
    from serving.decoding import Decoding

    return Decoding(max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_k=body.top_k,
                    top_p=body.top_p, repetition_penalty=body.repetition_penalty, stop=tuple(body.stop),
                    seed=body.seed)


def _event(kind: str, payload: Any) -> str:
    data = {"text": payload} if kind == "text" else payload
    if kind == "done":
        data = {key: value for key, value in payload.items() if key != "seconds"}
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def _event_stream(lines) -> StreamingResponse:
    return StreamingResponse(lines, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


