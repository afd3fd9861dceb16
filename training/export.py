"""Export a checkpoint's model to ONNX (dynamic batch axis) and check it against torch with ONNX Runtime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import load_checkpoint, read_manifest, record_files
from training.models import build_model

ONNX_FILE = "model.onnx"


def example_input(manifest) -> torch.Tensor:
    model = manifest.model
    return torch.randn(3, model["window"], model["n_features"], generator=torch.Generator().manual_seed(0))


def export_onnx(ckpt: Path) -> float:
    """Write CKPT/model.onnx, record it in the manifest, and return the max abs difference ONNX vs torch."""
    import onnxruntime as ort

    manifest, weights = load_checkpoint(ckpt)
    model = build_model(manifest.model)
    model.load_state_dict(weights)
    model.eval()
    x = example_input(manifest)
    path = Path(ckpt) / ONNX_FILE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter handles nn.LSTM directly; the batch axis stays dynamic for serving.
        torch.onnx.export(model, (x,), str(path), input_names=["window"], output_names=["output"],
                          dynamic_axes={"window": {0: "batch"}, "output": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = torch.cat([x, example_input(manifest)[:1] * 2])  # a different batch size than traced
    with torch.no_grad():
        expected = model(batch).numpy()
    got = session.run(None, {"window": batch.numpy()})[0]
    manifest = read_manifest(ckpt)
    record_files(Path(ckpt), manifest, [ONNX_FILE])
    return float(np.max(np.abs(expected - got)))
