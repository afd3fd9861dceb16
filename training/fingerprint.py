"""What a checkpoint was made from, as three digests recorded in its manifest (`training.fingerprint`): the training
code, the data files, and the settings. Two runs with equal fingerprints train the same model (up to the
non-determinism of a time limit), so `modelyard demo` reuses a checkpoint whose fingerprint is the one it would make.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from training.checkpoint import sha256_file

CODE_ROOT = Path(__file__).resolve().parent  # the training package: data readers, models, recipes, engine, export
# Settings that change where or how a run executes, not the model it makes.
_NOT_SETTINGS = ("out", "resume", "evaluate", "node_rank", "rdzv_endpoint", "fingerprint", "data_dir")


def code_digest(root: Path = CODE_ROOT) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def data_digest(folder: Path, files: list[Path] | None = None) -> str:
    """sha256 over the files a run reads: `files` where the task names them, else everything under `folder`."""
    folder = Path(folder)
    paths = sorted(files) if files else sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in paths:
        name = path.relative_to(folder) if path.is_relative_to(folder) else path.name
        digest.update(f"{name}\0{sha256_file(path)}\0".encode())
    return digest.hexdigest()


def settings_digest(config: dict[str, Any]) -> str:
    kept = {k: v for k, v in config.items() if k not in _NOT_SETTINGS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def run_fingerprint(config: dict[str, Any], data_dir: Path, data_files: list[Path] | None = None) -> dict[str, str]:
    return {"code": code_digest(), "data": data_digest(data_dir, data_files), "settings": settings_digest(config)}
