"""Export a checkpoint's model to ONNX (dynamic batch, and sequence, axes) and check it against torch with ONNX
Runtime on inputs of other shapes than the traced ones."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.checkpoint import CheckpointManifest, load_checkpoint, read_manifest, record_files
from training.models import build_model
from training.models.causal_lm import ARCH as CAUSAL_LM
from training.models.image import ARCHS as IMAGE_ARCHS
from training.models.image import view_averaged
from training.models.sales import ARCHS as SALES_ARCHS
from training.models.text_classifier import ARCH as TEXT_CLASSIFIER

ONNX_FILE = "model.onnx"


@dataclass
class OnnxSignature:
    module: nn.Module  # what is traced: tensors in, one tensor out
    names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    output: str

    def example(self, batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError


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


class WindowSignature(OnnxSignature):
    def __init__(self, module: nn.Module, window: int, n_features: int) -> None:
        super().__init__(module, ["window"], {"window": {0: "batch"}, "output": {0: "batch"}}, "output")
        self.window, self.n_features = window, n_features

    def example(self, batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, self.window, self.n_features, generator=generator),)


class ImageSignature(OnnxSignature):
    def __init__(self, module: nn.Module, size: int) -> None:
        super().__init__(module, ["image"], {"image": {0: "batch"}, "logits": {0: "batch"}}, "logits")
        self.size = size

    def example(self, batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, 3, self.size, self.size, generator=generator),)


class SalesSignature(OnnxSignature):
    """The sales network's five inputs: past sales, on-sale flags and covariates, the days ahead's covariates, ids."""

    def __init__(self, module: nn.Module, config: dict) -> None:
        names = ["past_sales", "past_alive", "past_covariates", "future_covariates", "ids"]
        super().__init__(module, names, {**{name: {0: "batch"} for name in names}, "forecast": {0: "batch"}},
                         "forecast")
        self.config = config

    def example(self, batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        c, context, horizon = self.config, self.config["context"], self.config["horizon"]
        sales = torch.poisson(torch.full((batch, context), 2.0), generator=generator)
        alive = torch.ones(batch, context)
        alive[0, : context // 2] = 0  # a series launched inside the window
        ids = torch.stack([torch.randint(0, size, (batch,), generator=generator) for size in c["id_sizes"]], dim=1)
        return (sales, alive, torch.randn(batch, context, c["n_covariates"], generator=generator),
                torch.randn(batch, horizon, c["n_covariates"], generator=generator), ids)


def signature(manifest: CheckpointManifest, model: nn.Module) -> OnnxSignature:
    if manifest.model["arch"] in SALES_ARCHS:
        return SalesSignature(model, manifest.model)
    if manifest.model["arch"] in IMAGE_ARCHS:
        module = view_averaged(model, manifest.preprocessing)  # the averaging inside the graph
        return ImageSignature(module, int(manifest.preprocessing["image_size"]))
    if manifest.model["arch"] == TEXT_CLASSIFIER:
        names = ["input_ids", "attention_mask"]
        axes = {**{name: {0: "batch", 1: "sequence"} for name in names}, "logits": {0: "batch"}}
        # eval() on the wrapper too: the exporter restores the top module's mode recursively afterwards.
        return TextSignature(_Logits(model).eval(), names, axes, "logits")
    return WindowSignature(model, manifest.model["window"], manifest.model["n_features"])


def onnx_file(task: str) -> str | None:
    """The ONNX file a task's checkpoints are served from (its spec's onnx_file), None for a task without one."""
    from training.tasks.specs import task_spec

    return task_spec(task).onnx_file


@dataclass
class Exported:
    file: str
    max_abs_diff: float  # ONNX Runtime against torch
    note: str = ""


def export_onnx(ckpt: Path, weights: str | None = None) -> Exported:
    """Write the checkpoint's ONNX model (model.onnx; a generator's decoder.onnx, its matrices in `weights`), record
    it in the manifest, and check ONNX Runtime against torch."""
    import onnxruntime as ort

    if read_manifest(ckpt).model["arch"] == CAUSAL_LM:
        from training.decoder_onnx import DECODER_FILE, export_decoder

        parity = export_decoder(Path(ckpt), weights or "int8")
        return Exported(DECODER_FILE, parity.max_abs_diff,
                        f"{weights or 'int8'} weights; the same next token at {100 * parity.top1_agreement:.1f}% "
                        f"of positions")
    if weights is not None:
        raise ValueError("--weights applies to a generator's decoder only")
    manifest, weights = load_checkpoint(ckpt)
    model = build_model(manifest.model)
    model.load_state_dict(weights)
    model.eval()
    sig = signature(manifest, model)
    path = Path(ckpt) / ONNX_FILE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter handles nn.LSTM and the transformers encoders directly.
        torch.onnx.export(sig.module, sig.example(3, 16, seed=0), str(path), input_names=sig.names,
                          output_names=[sig.output], dynamic_axes=sig.dynamic_axes, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = sig.example(5, 23, seed=1)  # other batch and sequence sizes than traced
    with torch.no_grad():
        expected = sig.module(*check).numpy()
    got = session.run(None, {name: t.numpy() for name, t in zip(sig.names, check, strict=True)})[0]
    manifest = read_manifest(ckpt)
    record_files(Path(ckpt), manifest, [ONNX_FILE])
    return Exported(ONNX_FILE, float(np.max(np.abs(expected - got))))
