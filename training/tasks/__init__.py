"""Task recipes by name, imported only when used (each pulls in its own libraries).

A recipe module provides NAME, DATA_SUBDIR, HF_MODEL, OPTIONS (its command-line options, training.options.Option),
HEADLINE (the report metric that sums it up), build_job, save, evaluate, synthesize and demo_runs.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from training.options import resolve

TASKS: dict[str, str] = {
    "turbofan": "training.tasks.turbofan",
    "news": "training.tasks.news",
    "image": "training.tasks.image",
    "sales": "training.tasks.sales",
    "generator": "training.tasks.generator",
}


def task_names() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])


def _source(name: str) -> ast.Module:
    return ast.parse(Path(importlib.util.find_spec(TASKS[name]).origin).read_text())


def summary(name: str) -> str:
    """The first line of the recipe's docstring, read without importing it (for listings)."""
    doc = ast.get_docstring(_source(name)) or ""
    return doc.splitlines()[0] if doc else ""


def declares(name: str, function: str) -> bool:
    """Whether the recipe defines `function` at its top level, read without importing it."""
    return any(isinstance(node, ast.FunctionDef) and node.name == function for node in _source(name).body)


def task_options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The task's option values: `given` completed with its declared defaults; undeclared names refused."""
    return resolve(get_task(name).OPTIONS, given, f"task {name}")
