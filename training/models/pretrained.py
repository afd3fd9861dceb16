"""Start a model from someone's weights (`--pretrained FILE`): a safetensors file, a modelyard checkpoint folder
(verified against its manifest), or a torch file read with `torch.load(weights_only=True)` (never unpickling
arbitrary objects). Wrapper prefixes (`module.`, `_orig_mod.`) are dropped, a model's `translate_keys` maps other
naming schemes onto its own, and tensors whose shape does not fit (a classifier for other classes) are left out:
that layer starts fresh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.checkpoint import MANIFEST, load_checkpoint, sha256_file

_PREFIXES = ("module.", "_orig_mod.", "model.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.is_dir() and (path / MANIFEST).is_file():
        return load_checkpoint(path)[1]
    if not path.is_file():
        raise FileNotFoundError(f"--pretrained {path}: no such file or checkpoint folder")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a file that is not a plain state dict
        raise ValueError(f"--pretrained {path}: not a weights-only torch file ({str(exc).splitlines()[0]})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"--pretrained {path}: holds no state dict of tensors")
    return loaded


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def load_pretrained(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load what fits of `path` into `model`; returns what happened (for the manifest), raises ValueError when
    nothing fits."""
    state = strip_prefixes(read_state_dict(path))
    if hasattr(model, "translate_keys"):
        state = model.translate_keys(state)
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    reshaped = sorted(k for k in state if k in own and k not in fitting)
    if not fitting:
        raise ValueError(f"--pretrained {path}: none of its {len(state)} tensors fits this model "
                         f"({type(model).__name__}); is it the same architecture?")
    model.load_state_dict(fitting, strict=False)
    fresh = sorted(k for k in own if k not in fitting and not k.endswith("num_batches_tracked"))
    return {"file": str(Path(path).resolve()), "sha256": sha256_file(path) if Path(path).is_file() else None,
            "loaded": len(fitting), "fresh": fresh, "reshaped": reshaped,
            "unused": sorted(k for k in state if k not in own)}
