"""Make each service's OpenAPI document (/docs.json) say what the service really answers.

BentoML 1.4 writes its document in OpenAPI 3.0 and, inlining a route's request and response schemas, keeps only the
first branch of every `anyOf`: an optional field (`float | None`) is documented as a plain number although the
service answers `null`. It also documents every error body's `detail` as a string, while a rejected request
(pydantic validation, which is how these services refuse bad input) carries the list of pydantic errors there.
It parses form and multipart bodies for any route, and a multipart body without a boundary ends in a 500.

`document_truthfully(service)` adds an ASGI middleware that corrects the served document (optional fields are
`nullable`, request bodies are required, the 400 body is declared as it is sent) and answers a request whose
Content-Type the route does not declare with 415 in that same error shape, before BentoML parses it.

BentoML's own client (`bentoml.SyncHTTPClient`) calls the routes that /schema.json lists, which are the
`@bentoml.api` ones only. A service whose routes are FastAPI routes (they parse two body forms, or refuse a stream
with a status before its first event) lists them there too, as `CLIENT_ROUTES` on its class (`client_route`).
"""

from __future__ import annotations

import json
from typing import Any

# What BentoML sends for a request that fails validation (_bentoml_impl/server/app.py): {"error", "detail": [...]}.
VALIDATION_ERROR_BODY: dict[str, Any] = {
    "type": "object",
    "title": "InvalidArgument",
    "description": "Bad Request: the request did not validate; `detail` says where and why",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "title": "Message"},
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "loc", "msg"],
                "properties": {
                    "type": {"type": "string", "description": "pydantic error type"},
                    "loc": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                            "description": "where in the request"},
                    "msg": {"type": "string", "description": "what is wrong"},
                    "url": {"type": "string"},
                },
            },
        },
    },
}


def _is_nullable(schema: dict[str, Any]) -> bool:
    return schema.get("nullable") is True or any(branch.get("type") == "null" for branch in schema.get("anyOf", []))


def _mark_nullable(inline: dict[str, Any], components: dict[str, Any], api: str) -> None:
    """Flag the inlined properties whose full (component) schema admits null, in objects and array items."""
    if inline.get("type") == "array":
        _mark_nullable(inline.get("items", {}), components, api)
        return
    title = inline.get("title", "")
    component = components.get(title) or components.get(f"{api}__{title}") or {}
    for name, prop in inline.get("properties", {}).items():
        if _is_nullable(component.get("properties", {}).get(name, {})):
            prop["nullable"] = True
            if prop.get("type") == "null":  # a field that is only ever null
                prop.pop("type")
            if "$ref" in prop:  # OpenAPI 3.0 ignores a $ref's siblings: nullable must sit beside an allOf
                prop["allOf"] = [{"$ref": prop.pop("$ref")}]
        _mark_nullable(prop, components, api)


def as_openapi30(schema: Any) -> Any:
    """A pydantic (JSON Schema 2020-12) schema in OpenAPI 3.0's dialect, which the document declares: a nullable
    `anyOf [X, {"type": "null"}]` becomes X with `nullable`, and a numeric `exclusiveMinimum`/`exclusiveMaximum`
    becomes the bound with the boolean flag. BentoML leaves referenced components in pydantic's form."""
    if isinstance(schema, list):
        return [as_openapi30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: as_openapi30(value) for key, value in schema.items()}
    branches = out.get("anyOf")
    if isinstance(branches, list) and any(b.get("type") == "null" for b in branches if isinstance(b, dict)):
        kept = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
        out.pop("anyOf")
        if len(kept) == 1 and "$ref" not in kept[0]:
            out.update(kept[0])
        else:
            out["anyOf" if len(kept) > 1 else "allOf"] = kept
        out["nullable"] = True
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out.get(bound), bool):
            out[plain], out[bound] = out[bound], True
    return out


def _operations(spec: dict[str, Any]):
    for route, path in spec.get("paths", {}).items():
        operation = path.get("post")
        if operation and "x-bentoml-name" in operation:
            yield route, operation


def request_media_types(spec: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """route -> the request media types its document declares."""
    return {route: tuple(op.get("requestBody", {}).get("content", {})) for route, op in _operations(spec)}


UNSUPPORTED_MEDIA_TYPE = {"description": "Unsupported Media Type: the request's Content-Type is not one this route "
                                         "reads", "content": {"application/json": {"schema": {
                                             "$ref": "#/components/schemas/InvalidArgument"}}}}


def correct_document(spec: dict[str, Any]) -> dict[str, Any]:
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    components.update({name: as_openapi30(schema) for name, schema in components.items()})
    components["InvalidArgument"] = VALIDATION_ERROR_BODY
    for _, operation in _operations(spec):
        api = operation["x-bentoml-name"]
        operation.setdefault("requestBody", {})["required"] = True
        operation["responses"]["415"] = UNSUPPORTED_MEDIA_TYPE
        for body in (operation.get("requestBody", {}), operation.get("responses", {}).get("200", {})):
            for media in body.get("content", {}).values():
                _mark_nullable(media.get("schema", {}), components, api)
    return spec


class TruthfulOpenAPI:
    """ASGI middleware: GET /docs.json answers the corrected document; a POST to a service route with a Content-Type
    it does not declare gets 415; everything else passes through."""

    def __init__(self, app: Any, service: Any) -> None:
        self.app, self.service = app, service
        self._accepted: dict[str, tuple[str, ...]] | None = None

    @property
    def accepted(self) -> dict[str, tuple[str, ...]]:
        if self._accepted is None:  # the service's APIs are all known by the first request
            self._accepted = request_media_types(self.service.openapi_spec.asdict())
        return self._accepted

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("path") == "/docs.json":
            await self._rewritten(scope, receive, send, correct_document)
        elif scope.get("type") == "http" and scope.get("path") == "/schema.json":
            await self._rewritten(scope, receive, send, self._with_client_routes)
        elif (scope.get("type") == "http" and scope.get("method") == "POST" and scope.get("path") in self.accepted
              and _media_type(scope) not in self.accepted[scope["path"]]):
            await _send_json(send, 415, {"error": "Unsupported Media Type", "detail": [{
                "type": "unsupported_media_type", "loc": ["header", "content-type"],
                "msg": f"send the body as {' or '.join(self.accepted[scope['path']])}, not "
                       f"{_media_type(scope) or 'without a Content-Type'}"}]})
        else:
            await self.app(scope, receive, send)

    def _with_client_routes(self, schema: dict[str, Any]) -> dict[str, Any]:
        schema["routes"] = [*schema.get("routes", []), *getattr(self.service.inner, "CLIENT_ROUTES", ())]
        return schema

    async def _rewritten(self, scope: dict[str, Any], receive: Any, send: Any, rewrite: Any) -> None:
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        if start.get("status") == 200:
            body = json.dumps(rewrite(json.loads(body))).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _media_type(scope: dict[str, Any]) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == b"content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return ""


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def client_route(name: str, route: str, description: str, request: dict[str, Any], answer: dict[str, Any],
                 stream: bool = False) -> dict[str, Any]:
    """A route as /schema.json lists it for BentoML's client: `client.NAME(**fields)` POSTs them to `route`, as
    multipart/form-data when `request` has a field of type "file" (or an array of them), else as JSON; a `stream`
    answer is read chunk by chunk."""
    output = {**answer, **({"is_stream": True, "media_type": "text/event-stream"} if stream else {})}
    return {"name": name, "route": route, "description": description, "batchable": False, "input": request,
            "output": output, "is_task": False}


def document_truthfully(service: Any) -> Any:
    service.add_asgi_middleware(TruthfulOpenAPI, service=service)
    return service
