"""Where prepared data is kept between runs: $MODELYARD_CACHE, else ~/.cache/modelyard."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("MODELYARD_CACHE") or Path.home() / ".cache" / "modelyard")
