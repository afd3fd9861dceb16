"""The sensor message on `turbofan.sensors`: one JSON object per engine cycle, keyed by engine id.

```
{"schema_version": 1, "engine_id": 7, "cycle": 31, "event_time": 1795392000.123,
 "settings": [-0.0007, -0.0004, 100.0], "sensors": [518.67, 641.82, ...21 values]}
```
`parse_reading` is the one gate every consumer uses; whatever it rejects goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

import json
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
N_SETTINGS, N_SENSORS = 3, 21


class MessageError(ValueError):
    """A message that cannot be scored; the text says why (it goes into the DLQ headers)."""


class SensorReading(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=False)

    schema_version: Literal[1]
    engine_id: int = Field(ge=1)
    cycle: int = Field(ge=1)
    event_time: float = Field(gt=0)
    settings: list[float] = Field(min_length=N_SETTINGS, max_length=N_SETTINGS)
    sensors: list[float] = Field(min_length=N_SENSORS, max_length=N_SENSORS)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def reading_from_row(row: list[float], event_time: float | None = None) -> SensorReading:
    """A C-MAPSS row (unit, cycle, 3 settings, 21 sensors) as a message."""
    return SensorReading(schema_version=SCHEMA_VERSION, engine_id=int(row[0]), cycle=int(row[1]),
                         event_time=event_time or time.time(), settings=list(row[2:5]), sensors=list(row[5:26]))


def parse_reading(raw: bytes | None) -> SensorReading:
    if raw is None:
        raise MessageError("empty message (no value)")
    try:  # the fast path: pydantic parses and checks the bytes in one go
        return SensorReading.model_validate_json(raw)
    except ValidationError:
        pass  # say precisely what is wrong below
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise MessageError(f"schema_version {data.get('schema_version')!r} is not supported (expected "
                           f"{SCHEMA_VERSION})")
    try:
        return SensorReading.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "message"
        raise MessageError(f"{where}: {first['msg']}") from None
