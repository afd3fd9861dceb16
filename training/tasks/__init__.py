"""Task recipes by name, imported only when used (each pulls in its own libraries).

What a task is (its recipe module, data folder, headline metric, service, tab, ...) is declared in
`training.tasks.specs.<task>` (its command-line options too); a recipe module provides build_job, save, evaluate,
synthesize (and tune_space where its spec says it is tunable).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from training.options import resolve
from training.tasks.specs import task_spec, task_specs


def task_names() -> list[str]:
    return [spec.name for spec in task_specs()]


def get_task(name: str) -> ModuleType:
    return task_spec(name).recipe_module()


def summary(name: str) -> str:
    """One line for listings, read without importing the recipe."""
    return task_spec(name).summary


def task_options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The task's option values: `given` completed with its declared defaults; undeclared names refused."""
    return resolve(task_spec(name).options, given, f"task {name}")
