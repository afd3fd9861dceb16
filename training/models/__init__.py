"""Model definitions, each rebuilt from the plain `model` config stored in a checkpoint manifest.

A task's spec names its model module (training.tasks.specs), which lists the architectures it builds (ARCHS) and
builds one from its config (`build(config)`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from torch import nn

from training.checkpoint import CheckpointManifest, load_checkpoint


def build_model(config: dict[str, Any]) -> nn.Module:
    from training.tasks.specs import task_specs

    arch, known = config.get("arch"), []
    for spec in task_specs():
        module = importlib.import_module(spec.models)
        if arch in module.ARCHS:
            return module.build(config)
        known += list(module.ARCHS)
    raise ValueError(f"unknown model architecture {arch!r}; known: {', '.join(sorted(known))}")


def load_model(ckpt: Path) -> tuple[CheckpointManifest, nn.Module]:
    """A checkpoint's verified manifest and its model with the saved weights, in eval mode."""
    manifest, weights = load_checkpoint(Path(ckpt))
    model = build_model(manifest.model)
    model.load_state_dict(weights)
    return manifest, model.eval()
