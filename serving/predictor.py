"""Predictor runtimes: a verified checkpoint in, predictions out, on ONNX Runtime (default) or torch.

Every service (BentoML API, Kafka monitor, Gradio app) goes through this module and the checkpoint contract: the
manifest's sha256 is checked for every file before it is used, and nothing is unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from training.checkpoint import CheckpointError, CheckpointManifest, load_checkpoint, verify_checkpoint, verify_file

RUNTIMES = ("onnx", "torch")
ONNX_FILE = "model.onnx"


class ModelRunner:
    """One forward pass over named numpy inputs, returning the model's single output."""

    def __init__(self, ckpt: Path, manifest: CheckpointManifest, runtime: str, input_names: list[str]) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose {' or '.join(RUNTIMES)}")
        self.runtime, self.input_names = runtime, input_names
        if runtime == "onnx":
            self._session = _onnx_session(ckpt, manifest)
        else:
            self._model = _torch_model(ckpt)

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        if self.runtime == "onnx":
            return self._session.run(None, {name: inputs[name] for name in self.input_names})[0]
        import torch

        with torch.inference_mode():
            tensors = {name: torch.from_numpy(inputs[name]) for name in self.input_names}
            output = self._model(**tensors)
        return (output.logits if hasattr(output, "logits") else output).float().numpy()


def _onnx_session(ckpt: Path, manifest: CheckpointManifest):
    import onnxruntime as ort

    if ONNX_FILE not in manifest.files:
        raise CheckpointError(f"{Path(ckpt) / ONNX_FILE}: no ONNX model in this checkpoint; run "
                              f"`modelyard export {ckpt}` first, or serve with --runtime torch")
    path = verify_file(ckpt, manifest, ONNX_FILE)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("MODELYARD_THREADS", os.cpu_count() or 1))
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _torch_model(ckpt: Path):
    from training.models import build_model

    manifest, weights = load_checkpoint(ckpt)
    model = build_model(manifest.model)
    model.load_state_dict(weights)
    return model.eval()


class NewsPredictor:
    """Texts -> topic label, class index, probabilities, and whether the text was cut to the model's length."""

    task = "news"

    def __init__(self, ckpt: Path | str, runtime: str = "onnx") -> None:
        from training.checkpoint import load_tokenizer
        from training.data.ag_news import cleaner

        self.ckpt = Path(ckpt)
        manifest = verify_checkpoint(self.ckpt)
        if manifest.task != self.task:
            raise CheckpointError(f"{self.ckpt}: a {manifest.task} checkpoint, not a {self.task} one")
        pre = manifest.preprocessing
        self.manifest, self.labels, self.max_length = manifest, list(pre["labels"]), int(pre["max_length"])
        self.clean = cleaner(pre)
        self.tokenizer = load_tokenizer(self.ckpt, manifest, pre["tokenizer_dir"])
        self.runner = ModelRunner(self.ckpt, manifest, runtime, ["input_ids", "attention_mask"])

    def encode(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids cut to max_length (keeping the closing special token), and which texts were cut."""
        full = self.tokenizer(self.clean(texts))["input_ids"]
        cut = [len(ids) > self.max_length for ids in full]
        return [ids[:self.max_length - 1] + ids[-1:] if c else ids for ids, c in zip(full, cut, strict=True)], cut

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        from training.data.batching import pad_batch

        if not texts:
            return []
        ids, cut = self.encode(texts)
        input_ids, mask = pad_batch(ids, self.tokenizer.pad_token_id)
        logits = self.runner(input_ids=input_ids.numpy(), attention_mask=mask.numpy())
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        return [{"label": self.labels[int(p.argmax())], "index": int(p.argmax()),
                 "probabilities": {label: round(float(v), 6) for label, v in zip(self.labels, p, strict=True)},
                 "truncated": c} for p, c in zip(probs, cut, strict=True)]


PREDICTORS = {NewsPredictor.task: NewsPredictor}


def load_predictor(ckpt: Path | str, runtime: str = "onnx"):
    """The predictor for whatever task the checkpoint holds."""
    from training.checkpoint import read_manifest

    task = read_manifest(Path(ckpt)).task
    if task not in PREDICTORS:
        raise CheckpointError(f"{ckpt}: no predictor for task {task!r} (known: {', '.join(PREDICTORS)})")
    return PREDICTORS[task](ckpt, runtime)
