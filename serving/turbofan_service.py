"""The turbofan scoring API as a BentoML service: POST /score with one engine's cycles -> predicted RUL (or the
autoencoder's reconstruction error), a health score and the checkpoint detector's alarm flag.

Each cycle is 24 numbers in C-MAPSS column order (3 operating settings, then sensors s1..s21). Send a window or an
engine's whole history: the model reads the last `window` cycles, repeating the first one when there are fewer (as
in training). Settings come from MODELYARD_CHECKPOINT / MODELYARD_RUNTIME and OPTIONS, which `modelyard serve`
sets.
"""

from __future__ import annotations

from typing import Annotated

import bentoml
import numpy as np
from pydantic import BaseModel, Field

from serving.openapi import document_truthfully
from serving.settings import read_settings
from training.options import Option

SERVICE, ROUTE = "TurbofanScorer", "/score"
OPTIONS = (Option("max_cycles", int, 5000, "most cycles in one request", minimum=1),)
MAX_CYCLES = read_settings(OPTIONS)["max_cycles"]

# strict: JSON booleans are not numbers here (pydantic would read true as 1.0).
Cycle = Annotated[list[Annotated[float, Field(allow_inf_nan=False, strict=True)]], Field(min_length=24, max_length=24)]


class EngineScore(BaseModel):
    predicted_rul: float | None = Field(None, description="cycles left (RUL models)")
    reconstruction_error: float | None = Field(None, description="anomaly score (autoencoder models)")
    health: float = Field(description="1 healthy .. 0 at or past the alarm")
    alarm: bool = Field(description="the checkpoint's detector fires on this window")
    cycles_used: int


@document_truthfully
@bentoml.service(name="turbofan_scorer", workers=1, traffic={"timeout": 30})
class TurbofanScorer:
    def __init__(self) -> None:
        from serving.predictor import TurbofanPredictor

        self.predictor = TurbofanPredictor.from_env()

    @bentoml.api(route="/score")
    def score(self, cycles: Annotated[list[Cycle], Field(min_length=1, max_length=MAX_CYCLES)]) -> EngineScore:
        """Score one engine: its recent cycles (at least one; the last `window` are used)."""
        rows = np.asarray(cycles, dtype=np.float64)
        features = self.predictor.features(rows[:, :3], rows[:, 3:])
        window = self.predictor.last_window(features)[None]
        result = self.predictor.assess(self.predictor.score(window))[0]
        return EngineScore(**result, cycles_used=min(len(cycles), self.predictor.window))
