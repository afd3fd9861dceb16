"""The news topic API as a BentoML service: POST /classify {"texts": [...]} -> one prediction per text.

`/classify` is batchable: BentoML's adaptive batching merges the `texts` of concurrent requests into one model call
and splits the answers back. Each request is validated on its own before it joins a batch (pydantic, HTTP 400 with
the reason), so one bad request can never fail the batch it would have shared. Settings come from the environment
that `modelyard serve` (serving.server) sets: MODELYARD_CHECKPOINT, MODELYARD_RUNTIME and the OPTIONS below.
"""

from __future__ import annotations

from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from pydantic import BaseModel, Field, StringConstraints

from serving.openapi import document_truthfully
from serving.settings import read_settings
from training.options import Option

SERVICE, ROUTE = "NewsClassifier", "/classify"
OPTIONS = (Option("max_texts", int, 64, "most texts in one request", minimum=1),
           Option("max_chars", int, 10_000, "most characters in one text", minimum=1))
SETTINGS = read_settings(OPTIONS)
MAX_TEXTS, MAX_CHARS = SETTINGS["max_texts"], SETTINGS["max_chars"]

# Declared rather than inferred: for a list answer BentoML otherwise derives the media type from the answer's JSON
# schema, rebuilt for every response (a third of the event loop's time under load, measured with py-spy).
JSON = ContentType("application/json")

NewsText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CHARS, pattern=r"\S")]


class TopicPrediction(BaseModel):
    label: str
    index: int
    probabilities: dict[str, float]
    truncated: bool = Field(description="the text was longer than the model reads and was cut")


@document_truthfully
@bentoml.service(name="news_classifier", workers=1, traffic={"timeout": 30})
class NewsClassifier:
    def __init__(self) -> None:
        from serving.predictor import NewsPredictor

        self.predictor = NewsPredictor.from_env()

    @bentoml.api(route="/classify", batchable=True, max_batch_size=64, max_latency_ms=1000)
    def classify(
        self, texts: Annotated[list[NewsText], Field(min_length=1, max_length=MAX_TEXTS)]
    ) -> Annotated[list[TopicPrediction], JSON]:
        """Topic of each text: World, Sports, Business or Sci/Tech, with the four probabilities."""
        return [TopicPrediction(**p) for p in self.predictor.predict(texts)]
