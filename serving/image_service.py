"""The image API as a BentoML service: POST /classify with images -> the top-k classes of each, with probabilities.

Two request forms on one route: multipart/form-data with image files (field `files`, repeatable; `top_k` as a form
field), or JSON `{"images": ["<base64>", ...], "top_k": 5}`. PNG, JPEG, WebP (BMP, GIF) of any size are resized
as in training. The route is a FastAPI route mounted in the service, because it parses both forms itself: BentoML's
own file inputs would also take a text field as a URL to download, or decode a JSON string as a file. Concurrent
requests' images are scored together (serving.batching). Refusals are HTTP 4xx in one shape, `{"error", "detail":
[{"type", "loc", "msg"}]}`: not an image, a corrupt file, more pixels than MAX_PIXELS, too many files (400), a body
or file too large (413), another Content-Type (415). Settings: MODELYARD_CHECKPOINT, MODELYARD_RUNTIME and the
OPTIONS below.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import bentoml
import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from serving.openapi import VALIDATION_ERROR_BODY, client_route, document_truthfully
from serving.refusal import Refused
from serving.settings import read_settings
from training.options import Option

SERVICE, ROUTE = "ImageClassifier", "/classify"
OPTIONS = (Option("max_images", int, 16, "most images in one request", minimum=1),
           Option("max_image_bytes", int, 5_000_000, "most bytes in one image file", minimum=1),
           Option("max_pixels", int, 24_000_000, "most pixels an image may declare (decompression bombs)", minimum=1))
SETTINGS = read_settings(OPTIONS)
MAX_IMAGES, MAX_BYTES, MAX_PIXELS = SETTINGS["max_images"], SETTINGS["max_image_bytes"], SETTINGS["max_pixels"]
# base64 is 4/3 of the bytes; the JSON body may hold MAX_IMAGES of them, plus a little structure
MAX_BODY = MAX_IMAGES * (MAX_BYTES * 4 // 3 + 1024) + 4096


class ClassScore(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    top: list[ClassScore] = Field(description="the top-k classes, most probable first")


class Base64Images(BaseModel):
    images: list[Annotated[str, Field(min_length=1, max_length=MAX_BYTES * 4 // 3 + 4)]] = Field(
        min_length=1, max_length=MAX_IMAGES, description="base64-encoded image files (PNG, JPEG, WebP)")
    top_k: int = Field(5, ge=1, le=10)


app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)  # BentoML serves the one document, /docs.json

ERROR = {"content": {"application/json": {"schema": VALIDATION_ERROR_BODY}}}
ANSWER = TypeAdapter(list[ImagePrediction]).json_schema()


def files_form(file: dict[str, str]) -> dict[str, Any]:
    """The multipart form's schema, a file written as `file` (OpenAPI's binary string, or BentoML's client's file)."""
    return {"type": "object", "required": ["files"], "properties": {
        "files": {"type": "array", "items": file, "minItems": 1, "maxItems": MAX_IMAGES,
                  "description": "image files (PNG, JPEG, WebP)"},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5}}}


REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": files_form({"type": "string", "format": "binary"})},
        "application/json": {"schema": Base64Images.model_json_schema()},
    },
}


@document_truthfully
@bentoml.service(name="image_classifier", workers=1, traffic={"timeout": 30})
@bentoml.asgi_app(app, path="/")
class ImageClassifier:
    # BentoML's client: `client.classify(images=[base64...])` sends JSON, `client.classify_files(files=[path...])`
    # multipart; both to /classify
    CLIENT_ROUTES = (
        client_route("classify", ROUTE, "Classify base64-encoded images (JSON)", Base64Images.model_json_schema(),
                     ANSWER),
        client_route("classify_files", ROUTE, "Classify image files (multipart/form-data)",
                     files_form({"type": "file", "format": "image"}), ANSWER),
    )

    def __init__(self) -> None:
        import prometheus_client as prom  # after BentoML has set its multiprocess directory

        from serving.batching import MicroBatcher
        from serving.image_predictor import ImagePredictor

        self.predictor = ImagePredictor.from_env()
        self.batch_images = prom.Histogram("modelyard_image_batch_size", "images scored in one model call (concurrent "
                                           "requests merged)", buckets=(1, 2, 4, 8, 16, 32, 64))
        self.batcher = MicroBatcher(self._score, max_batch=64)

    def _score(self, images):
        self.batch_images.observe(len(images))
        return self.predictor.probabilities(images)

    @app.post(ROUTE, response_model=list[ImagePrediction], openapi_extra={"requestBody": REQUEST_BODY},
              responses={400: {"description": "Bad Request: not an image this service reads", **ERROR},
                         413: {"description": "Content Too Large: the body, or a file, is larger than allowed",
                               **ERROR},
                         415: {"description": "Unsupported Media Type", **ERROR}},
              summary="Classify images", description=__doc__.split("\n\n")[1])
    async def classify(self, request: Request) -> Any:
        import asyncio

        try:
            uploads, top_k, field = await self._uploads(request)
            # Decoding a large photo takes a while: off the event loop, which keeps serving other requests.
            images = await asyncio.get_running_loop().run_in_executor(None, self._decode_all, uploads, field)
        except Refused as exc:
            return exc.response()
        probabilities = await self.batcher(images)
        return [{"top": top} for top in self.predictor.top_k(probabilities, top_k)]

    async def _uploads(self, request: Request) -> tuple[list[bytes], int, str]:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        length = int(request.headers.get("content-length") or 0)
        if length > MAX_BODY:
            raise Refused(f"the request is {length:,} bytes; at most {MAX_BODY:,}", status=413, kind="too_large")
        if media == "application/json":
            return await self._json(request)
        if media == "multipart/form-data":
            return await self._multipart(request)
        raise Refused(f"send multipart/form-data (files) or application/json (base64 images), not {media or 'nothing'}",
                      ["header", "content-type"], status=415, kind="unsupported_media_type")

    async def _json(self, request: Request) -> tuple[list[bytes], int, str]:
        try:
            body = Base64Images.model_validate_json(await request.body())
        except ValidationError as exc:
            raise Refused.first_of(exc) from None
        uploads = []
        for i, text in enumerate(body.images):
            try:
                uploads.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise Refused("not valid base64", ["images", i], kind="base64") from None
        return uploads, body.top_k, "images"

    async def _multipart(self, request: Request) -> tuple[list[bytes], int, str]:
        try:
            form = await request.form(max_files=MAX_IMAGES, max_fields=8, max_part_size=MAX_BYTES)
        except Exception as exc:  # noqa: BLE001 - starlette's parser raises several kinds for a malformed body
            message = str(exc) or type(exc).__name__
            status = 413 if "exceeded" in message.lower() else 400  # bytes beyond a limit; counts are 400
            raise Refused(f"unreadable multipart body: {message}", status=status, kind="multipart") from None
        files = form.getlist("files")
        if not files:
            raise Refused("no `files` field: attach at least one image file", ["files"], kind="missing")
        uploads = []
        for i, item in enumerate(files):
            if isinstance(item, str) or not hasattr(item, "read"):
                raise Refused("`files` must be uploaded files, not text", ["files", i], kind="not_a_file")
            uploads.append(await item.read())
        return uploads, self._top_k(form.get("top_k")), "files"

    @staticmethod
    def _top_k(value: Any) -> int:
        if value is None:
            return 5
        try:
            top_k = int(value)  # a form field is text: "3"; not JSON, where true would count as 1
        except (TypeError, ValueError):
            raise Refused("top_k must be an integer", ["top_k"], kind="int_parsing") from None
        if not 1 <= top_k <= 10:
            raise Refused("top_k must be between 1 and 10", ["top_k"], kind="range")
        return top_k

    def _decode_all(self, uploads: list[bytes], field: str) -> np.ndarray:
        from serving.image_predictor import decode_upload

        images = []
        for index, raw in enumerate(uploads):
            if len(raw) > MAX_BYTES:
                raise Refused(f"{len(raw):,} bytes; at most {MAX_BYTES:,} per image", [field, index], status=413,
                              kind="too_large")
            try:
                images.append(decode_upload(raw, self.predictor.size, MAX_PIXELS))
            except Refused as exc:  # said of the file: say which one
                raise Refused(str(exc), [field, index], kind="image") from None
        return np.stack(images)
