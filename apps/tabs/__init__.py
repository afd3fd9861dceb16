"""The Gradio app's tabs, one module per model, in the order they appear.

A tab module declares TITLE, OPTIONS (what `modelyard app` takes for it, training.options.Option), `wanted(values)`
(whether the given options ask for the tab) and `build(values)` (draws it inside the open gr.Tab). Modules import
gradio inside `build` only, so the command line can read their options cheaply.
"""

from __future__ import annotations

import importlib
from types import ModuleType

TABS: dict[str, str] = {
    "news": "apps.tabs.news",
    "turbofan": "apps.tabs.turbofan",
    "image": "apps.tabs.image",
    "sales": "apps.tabs.sales",
    "generator": "apps.tabs.generator",
}


def tab_modules() -> list[ModuleType]:
    return [importlib.import_module(path) for path in TABS.values()]
