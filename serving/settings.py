"""A service's settings: declared as options (training.options.Option) in its module, handed to the `bentoml serve`
process as MODELYARD_<NAME> environment variables by serving.server, and read back here with their types."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from training.options import Option


def env_name(option: Option | str) -> str:
    return "MODELYARD_" + (option if isinstance(option, str) else option.name).upper()


def read_settings(options: Iterable[Option]) -> dict[str, Any]:
    values = {}
    for option in options:
        raw = os.environ.get(env_name(option))
        if raw is None:
            values[option.name] = option.default
        elif option.type is bool:
            values[option.name] = raw.lower() in ("1", "true", "yes")
        else:
            values[option.name] = (Path if option.type is Path else option.type)(raw)
    return values


def settings_env(values: dict[str, Any]) -> dict[str, str]:
    return {env_name(name): str(value) for name, value in values.items() if value is not None}
