"""Export a checkpoint's model to ONNX (dynamic batch, and sequence, axes) and check it against torch with ONNX
Runtime on inputs of other shapes than the traced ones."""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.checkpoint import read_manifest, read_report, record_files
from training.model_card import CARD, write_card
from training.models import load_model
from training.tasks.specs import load_named, task_spec


@dataclass
class OnnxSignature:
    module: nn.Module  # what is traced: tensors in, one tensor out
    names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    output: str

    def example(self, batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError


def onnx_file(task: str) -> str | None:
    """The ONNX file a task's checkpoints are served from (its spec's onnx_file)."""
    return task_spec(task).onnx_file


@dataclass
class Exported:
    file: str
    max_abs_diff: float  # of the outputs, the exported model's against the checkpoint's in torch
    note: str = ""
    compared: str = "ONNX Runtime vs torch"  # what max_abs_diff compares, as the command prints it


def export_checkpoint(ckpt: Path, format_: str = "onnx", weights: str | None = None,
                      out: Path | None = None) -> Exported:
    """Write the checkpoint's model in `format_` with the exporter its task's spec names and check it against torch:
    onnx (recorded in the manifest; `weights` int8|fp32 for an exporter that quantizes), or one of the spec's
    further formats (a folder: `out`, default inside the checkpoint and recorded)."""
    spec = task_spec(read_manifest(ckpt).task)
    formats = {"onnx": spec.exporter, **spec.formats}
    if format_ not in formats:
        raise ValueError(f"{ckpt}: a {spec.name} checkpoint exports to {' or '.join(formats)}, not {format_}")
    exported = load_named(formats[format_])(Path(ckpt), weights if format_ == "onnx" else out)
    if format_ == "onnx":  # the checkpoint folder is what serving and Bentos take: its card goes beside the model
        manifest = read_manifest(ckpt)
        write_card(ckpt, manifest, read_report(ckpt, manifest), serving_use(spec.name, exported.file))
        record_files(Path(ckpt), manifest, [CARD])
    return exported


def serving_use(task: str, onnx_file: str) -> list[str]:
    """The model card's "Use" for a checkpoint folder (and the model a Bento serves)."""
    return [f"- over HTTP: `modelyard serve {task} --checkpoint FOLDER` (BentoML; OpenAPI document at /docs), or "
            f"`modelyard bento {task} --checkpoint FOLDER` and `bentoml serve TAG`;",
            f"- in-process: ONNX Runtime on `FOLDER/{onnx_file}` (`onnxruntime.InferenceSession`; its inputs and "
            "outputs are named in the graph), after the preprocessing the manifest records (manifest.json);",
            "- every file's sha256 is in manifest.json: check them before use (`modelyard` does)."]


def export_traced(ckpt: Path, weights: str | None = None) -> Exported:
    """model.onnx traced from the model its task's model module wraps for export (`onnx_signature`), checked with
    ONNX Runtime on inputs of other shapes than the traced ones."""
    import onnxruntime as ort

    if weights is not None:
        raise ValueError("--weights applies to a generator's decoder only")
    manifest, model = load_model(ckpt)
    spec = task_spec(manifest.task)
    sig = importlib.import_module(spec.models).onnx_signature(manifest, model)
    path = Path(ckpt) / spec.onnx_file
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
    record_files(Path(ckpt), manifest, [spec.onnx_file])
    return Exported(spec.onnx_file, float(np.max(np.abs(expected - got))))
