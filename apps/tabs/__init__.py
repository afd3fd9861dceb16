"""The Gradio app's tabs: the module each task's spec names (training.tasks.specs), in the registry's order.

A tab module declares TITLE, OPTIONS (what `modelyard app` takes for it, training.options.Option), `wanted(values)`
(whether the given options ask for the tab) and `build(values)` (draws it inside the open gr.Tab). Modules import
gradio inside `build` only, so the command line can read their options cheaply.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def tab_modules() -> list[ModuleType]:
    from training.tasks.specs import task_specs

    return [importlib.import_module(spec.tab) for spec in task_specs() if spec.tab]
