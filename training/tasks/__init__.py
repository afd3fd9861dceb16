"""Task recipes by name. Each module provides NAME, DATA_SUBDIR, build_job, save, evaluate and synthesize."""

from __future__ import annotations

from types import ModuleType

from training.tasks import turbofan

TASKS: dict[str, ModuleType] = {turbofan.NAME: turbofan}


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]
