"""Command-line options as plain data: the engine, each task recipe, each service and each app tab declare theirs
once, and the `modelyard` command line is built from these declarations (apps/commands.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Option:
    """One option: `name` is the Python name (`alert_rul`), the flag is `--alert-rul`.

    A bool is a flag: `--name` when it defaults to False, `--name/--no-name` when it defaults to True."""

    name: str
    type: type = str  # str | int | float | bool | Path
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None  # inclusive lower bound for numbers
    required: bool = False
    multiple: bool = False  # repeatable; the value is a tuple
    aliases: tuple[str, ...] = ()  # older flag names that keep working

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def defaults(options: Iterable[Option]) -> dict[str, Any]:
    return {option.name: option.default for option in options}


def resolve(options: Iterable[Option], given: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """`given` completed with the declared defaults; an undeclared name is refused, naming `owner`."""
    declared = {option.name: option for option in options}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        raise ValueError(f"{owner} has no option {flags}; it takes: "
                         f"{', '.join(o.flag for o in declared.values()) or 'none'}")
    values = {**defaults(declared.values()), **given}
    for name, value in values.items():
        if isinstance(value, Path):  # stored in JSON configs and manifests
            values[name] = str(value.resolve())
    return values
