"""Predictor runtimes: a verified checkpoint in, predictions out, on ONNX Runtime (default) or torch.

Every service (BentoML API, Kafka monitor, Gradio app) goes through this module and the checkpoint contract: the
manifest's sha256 is checked for every file before it is used, and nothing is unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from training.checkpoint import CheckpointError, CheckpointManifest, verify_checkpoint, verify_file

RUNTIMES = ("onnx", "torch")


class ModelRunner:
    """One forward pass over named numpy inputs, returning the model's single output."""

    def __init__(self, ckpt: Path, manifest: CheckpointManifest, runtime: str, input_names: list[str],
                 wrap: Callable[[Any], Any] = lambda model: model) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose {' or '.join(RUNTIMES)}")
        self.runtime, self.input_names = runtime, input_names
        if runtime == "onnx":
            self._session = _onnx_session(ckpt, manifest)
        else:
            from training.models import load_model

            self._model = wrap(load_model(ckpt)[1])

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        if self.runtime == "onnx":
            return self._session.run(None, {name: inputs[name] for name in self.input_names})[0]
        import torch

        with torch.inference_mode():
            # Positional, in the ONNX input order: modelyard's modules take one tensor, transformers classifiers
            # take (input_ids, attention_mask) first.
            output = self._model(*(torch.from_numpy(inputs[name]) for name in self.input_names))
        return (output.logits if hasattr(output, "logits") else output).float().numpy()


def _onnx_session(ckpt: Path, manifest: CheckpointManifest):
    import onnxruntime as ort

    from training.tasks.specs import task_spec

    onnx_file = task_spec(manifest.task).onnx_file
    if onnx_file not in manifest.files:
        raise CheckpointError(f"{Path(ckpt) / onnx_file}: no ONNX model in this checkpoint; run "
                              f"`modelyard export {ckpt}` first, or serve with --runtime torch")
    path = verify_file(ckpt, manifest, onnx_file)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("MODELYARD_THREADS", os.cpu_count() or 1))
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def open_verified(ckpt: Path | str, task: str) -> CheckpointManifest:
    """The manifest of a checkpoint whose every file matches its sha256, holding a model for `task`."""
    manifest = verify_checkpoint(Path(ckpt))
    if manifest.task != task:
        raise CheckpointError(f"{ckpt}: a {manifest.task} checkpoint, not a {task} one")
    return manifest


class CheckpointPredictor:
    """A verified checkpoint of `task`: its manifest, preprocessing (`pre`) and a runner of its model on `runtime`
    taking `inputs`."""

    task: str
    inputs: tuple[str, ...]

    def __init__(self, ckpt: Path | str, runtime: str = "onnx") -> None:
        self.ckpt, self.runtime = Path(ckpt), runtime
        self.manifest = open_verified(self.ckpt, self.task)
        self.pre = self.manifest.preprocessing
        self.runner = ModelRunner(self.ckpt, self.manifest, runtime, list(self.inputs), self.around_model)

    @classmethod
    def from_env(cls, **options: Any) -> CheckpointPredictor:
        """On the checkpoint and runtime `modelyard serve` hands its service process (and a task's own options)."""
        return cls(os.environ["MODELYARD_CHECKPOINT"], os.environ.get("MODELYARD_RUNTIME", "onnx"), **options)

    def around_model(self, model: Any) -> Any:
        """For the torch runtime: what the export put around the model in the ONNX graph (e.g. test-time averaging),
        so both runtimes answer the same."""
        return model


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class NewsPredictor(CheckpointPredictor):
    """Texts -> topic label, class index, probabilities, and whether the text was cut to the model's length."""

    task, inputs = "news", ("input_ids", "attention_mask")

    def __init__(self, ckpt: Path | str, runtime: str = "onnx") -> None:
        from training.checkpoint import load_tokenizer
        from training.data.ag_news import cleaner

        super().__init__(ckpt, runtime)
        self.labels, self.max_length = list(self.pre["labels"]), int(self.pre["max_length"])
        self.clean = cleaner(self.pre)
        self.tokenizer = load_tokenizer(self.ckpt, self.manifest, self.pre["tokenizer_dir"])

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
        return [{"label": self.labels[int(p.argmax())], "index": int(p.argmax()),
                 "probabilities": {label: round(float(v), 6) for label, v in zip(self.labels, p, strict=True)},
                 "truncated": c} for p, c in zip(softmax(logits), cut, strict=True)]


class TurbofanPredictor(CheckpointPredictor):
    """Raw engine cycles (3 settings + 21 sensors each) -> the checkpoint's score per window (predicted RUL, or
    reconstruction error), a health score in [0, 1] and the alarm flag of the checkpoint's detector."""

    task, inputs = "turbofan", ("window",)

    def __init__(self, ckpt: Path | str, runtime: str = "onnx") -> None:
        from training.data.cmapss import TurbofanPreprocessor

        super().__init__(ckpt, runtime)
        pre = self.pre
        self.window, self.objective = int(pre["window"]), pre["objective"]
        self.detector, self.rul_cap = pre["detector"], float(pre.get("rul_cap") or 125.0)
        self.normalizer = TurbofanPreprocessor.from_dict(pre["normalizer"])

    def features(self, settings: np.ndarray, sensors: np.ndarray) -> np.ndarray:
        return self.normalizer.transform_arrays(settings, sensors)

    def last_window(self, features: np.ndarray) -> np.ndarray:
        """The window ending at the last row; an engine's first cycles repeat its first row, as in training."""
        recent = features[-self.window:]
        pad = np.repeat(recent[:1], self.window - len(recent), axis=0)
        return np.concatenate([pad, recent]).astype(np.float32)

    def score(self, windows: np.ndarray) -> np.ndarray:
        output = self.runner(window=np.ascontiguousarray(windows, dtype=np.float32))
        if self.objective == "rul":
            return output.reshape(-1)
        return ((output - windows) ** 2).mean(axis=(1, 2))

    def assess(self, scores: np.ndarray) -> list[dict[str, Any]]:
        threshold, high = float(self.detector["threshold"]), bool(self.detector["alarm_when_high"])
        results = []
        for value in np.asarray(scores, dtype=np.float64):
            alarm = value >= threshold if high else value <= threshold
            health = 1 - value / (2 * threshold) if high else value / self.rul_cap
            key = "reconstruction_error" if high else "predicted_rul"
            results.append({key: round(float(value), 4), "health": round(float(np.clip(health, 0, 1)), 4),
                            "alarm": bool(alarm)})
        return results


def load_predictor(ckpt: Path | str, runtime: str = "onnx"):
    """The predictor for whatever task the checkpoint holds."""
    from training.checkpoint import read_manifest
    from training.tasks.specs import load_named, task_specs

    task = read_manifest(Path(ckpt)).task
    predictors = {spec.name: spec.predictor for spec in task_specs() if spec.predictor}
    if task not in predictors:
        raise CheckpointError(f"{ckpt}: no predictor for task {task!r} (known: {', '.join(predictors)})")
    return load_named(predictors[task])(ckpt, runtime)
