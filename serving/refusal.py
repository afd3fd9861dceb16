"""The one way every service refuses a request: `Refused`, answered with the body each OpenAPI document declares.

The body is BentoML's own for a request that fails validation (`serving.openapi.VALIDATION_ERROR_BODY`):
`{"error": message, "detail": [{"type", "loc", "msg"}]}`, so a refusal found by a predictor (an unknown series, a
prompt over the token limit, a file that is no image) reads like a refusal found by pydantic. The OpenAI routes
translate it into OpenAI's error body (`serving.openai_api`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Loc = Sequence[str | int]


class Refused(ValueError):
    """A request the service will not answer: `loc` says where in the request the fault is, `status` is the HTTP
    status that fits, `kind` the error type in the body and `code` a machine-readable reason (OpenAI's `code`)."""

    def __init__(self, message: str, loc: Loc = ("body",), *, status: int = 400, kind: str = "refused",
                 code: str | None = None) -> None:
        super().__init__(message)
        self.loc, self.status, self.kind, self.code = list(loc), status, kind, code

    @classmethod
    def first_of(cls, exc: ValidationError, prefix: Loc = ()) -> Refused:
        """The first of pydantic's errors, as a refusal."""
        first = exc.errors(include_context=False, include_input=False, include_url=False)[0]
        return cls(first["msg"], [*prefix, *first["loc"]], kind=first["type"])

    @property
    def field(self) -> str:
        """The part of the request at fault, dotted (`history.prices`), without the `body` prefix."""
        parts = self.loc[1:] if self.loc[:1] == ["body"] and len(self.loc) > 1 else self.loc
        return ".".join(str(part) for part in parts)

    def body(self) -> dict[str, Any]:
        message = str(self)
        return {"error": message, "detail": [{"type": self.kind, "loc": self.loc, "msg": message}]}

    def response(self):
        """The refusal as an HTTP answer, for routes that build their own (the FastAPI routes)."""
        from starlette.responses import JSONResponse

        return JSONResponse(self.body(), status_code=self.status)

    def as_validation_error(self) -> ValidationError:
        """The refusal for a `@bentoml.api` route, which answers a ValidationError with 400 and this same body."""
        return ValidationError.from_exception_data("request", [InitErrorDetails(
            type=PydanticCustomError(self.kind, str(self)), loc=tuple(self.loc), input=None)])
