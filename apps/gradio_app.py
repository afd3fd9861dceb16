"""The Gradio demo: one tab per model (apps/tabs), each calling its BentoML API when given its URL."""

from __future__ import annotations

import os
from typing import Any

from apps.tabs import tab_modules

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reporting to the internet


def build_app(values: dict[str, Any]):
    """A gr.Blocks with the tabs that `values` (the tabs' declared options by name) ask for."""
    import gradio as gr

    tabs = [tab for tab in tab_modules() if tab.wanted(values)]
    if not tabs:
        flags = ", ".join(option.flag for tab in tab_modules() for option in tab.OPTIONS)
        raise ValueError(f"no tab to show: give at least one of {flags}")
    with gr.Blocks(title="modelyard demo") as app:
        gr.Markdown("# modelyard demo")
        for tab in tabs:
            with gr.Tab(tab.TITLE):
                tab.build(values)
    return app
