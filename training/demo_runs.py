"""What `modelyard demo` trains for a task: its spec's `demo_runs()` returns these, time-boxed for a 2-core CPU.

An option value "@NAME" stands for the checkpoint of the demo run NAME (trained first; when it is trained again, so
is every run that names it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DemoRun:
    name: str  # the checkpoint folder under the demo's --out
    title: str  # one line for the demo's heading
    engine: dict[str, Any] = field(default_factory=dict)  # engine option values (training.config.ENGINE_OPTIONS)
    options: dict[str, Any] = field(default_factory=dict)  # the task's own option values
    data_note: str = ""  # which data, said before training
    serve: bool = True  # this checkpoint is the one the task's API serves
    live: str = ""  # what it feeds in the task spec's live part (e.g. "stream monitor"); empty: none


def real_data_folder(subdir: str, pattern: str) -> Path | None:
    """$MODELYARD_DATA/subdir when it holds a file matching `pattern`, else None (the demo then generates data)."""
    root = os.environ.get("MODELYARD_DATA")
    folder = Path(root) / subdir if root else None
    return folder if folder and any(folder.glob(pattern)) else None
