"""Task recipes by name. Each module provides NAME, DATA_SUBDIR, HF_MODEL, build_job, save, evaluate, synthesize."""

from __future__ import annotations

from types import ModuleType

from training.tasks import news, turbofan

TASKS: dict[str, ModuleType] = {turbofan.NAME: turbofan, news.NAME: news}


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]
