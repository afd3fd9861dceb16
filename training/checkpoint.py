"""The checkpoint directory: the contract between training and everything downstream.

OUT/manifest.json describes the model (task, architecture, preprocessing, training config, metrics, library versions)
and lists every file with its sha256; OUT/model.safetensors holds consolidated weights. Loaders verify each file they
read against the manifest and refuse a checkpoint that does not match, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field, ValidationError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
REPORT = "report.json"
_VERSIONED_LIBRARIES = ("torch", "transformers", "colossalai", "fairscale", "onnx", "onnxruntime", "safetensors")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, malformed, or does not match its manifest."""


class FileEntry(BaseModel):
    sha256: str
    bytes: int


class CheckpointManifest(BaseModel):
    task: str
    format_version: int = FORMAT_VERSION
    model: dict[str, Any]  # architecture config: enough to rebuild the module without training code
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, FileEntry] = Field(default_factory=dict)
    library_versions: dict[str, str] = Field(default_factory=dict)
    created_at: str = ""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def save_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """safetensors refuses shared storage (tied weights) and non-contiguous tensors: store independent copies."""
    tensors = {name: t.detach().to("cpu").clone().contiguous() for name, t in state_dict.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    os.chmod(tmp, 0o644)  # safetensors creates 0600 files; a serving account must be able to read them
    os.replace(tmp, path)


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Numpy arrays into a safetensors file, each in C order: safetensors.numpy writes an array's memory as it lies,
    so a Fortran-ordered one (what pandas' to_numpy gives for a wide frame) would read back scrambled."""
    from safetensors.numpy import save_file as save_numpy

    tmp = path.with_name(f".{path.name}.tmp")
    save_numpy({name: np.ascontiguousarray(a) for name, a in arrays.items()}, str(tmp))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_checkpoint(out: Path, manifest: CheckpointManifest, state_dict: dict[str, torch.Tensor]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / WEIGHTS, state_dict)
    manifest.library_versions = library_versions()
    manifest.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest.files = {}
    record_files(out, manifest, [WEIGHTS])
    return out


def record_files(out: Path, manifest: CheckpointManifest, names: list[str]) -> None:
    """Hash `names` (relative to `out`) into the manifest and rewrite it; used by train, evaluate and export."""
    for name in names:
        path = out / name
        manifest.files[name] = FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)
    write_json_atomic(out / MANIFEST, manifest.model_dump())


def read_manifest(ckpt: Path) -> CheckpointManifest:
    path = Path(ckpt) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path}: not a modelyard checkpoint (manifest.json missing)")
    try:
        manifest = CheckpointManifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(map(str, first["loc"]))
        raise CheckpointError(f"{path}: invalid manifest ({field}: {first['msg']})") from None
    if manifest.format_version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {manifest.format_version} is not supported "
                              f"(this modelyard reads {FORMAT_VERSION})")
    return manifest


def verify_file(ckpt: Path, manifest: CheckpointManifest, name: str) -> Path:
    """Path of `name` after checking it is listed, present, and byte-identical to what the manifest recorded."""
    path = Path(ckpt) / name
    entry = manifest.files.get(name)
    if entry is None:
        raise CheckpointError(f"{path}: not listed in {MANIFEST}; refusing an unrecorded file")
    if not path.is_file():
        raise CheckpointError(f"{path}: listed in {MANIFEST} but missing")
    size = path.stat().st_size
    if size != entry.bytes:
        raise CheckpointError(f"{path}: {size} bytes, manifest records {entry.bytes} (truncated or replaced)")
    if sha256_file(path) != entry.sha256:
        raise CheckpointError(f"{path}: sha256 does not match {MANIFEST} (file was modified)")
    return path


def verify_checkpoint(ckpt: Path) -> CheckpointManifest:
    manifest = read_manifest(ckpt)
    for name in manifest.files:
        verify_file(ckpt, manifest, name)
    return manifest


def save_tokenizer(out: Path, tokenizer, folder: str) -> list[str]:
    """A Hugging Face tokenizer saved in OUT/folder; the files written, relative to `out`, for record_files."""
    saved = tokenizer.save_pretrained(str(Path(out) / folder))
    return sorted({str(Path(p).resolve().relative_to(Path(out).resolve())) for p in saved if Path(p).is_file()})


def write_report(ckpt: Path, manifest: CheckpointManifest, report: dict[str, Any], metrics: dict[str, Any],
                 files: Sequence[str] = ()) -> dict[str, Any]:
    """An evaluation's report.json beside the checkpoint: its `metrics` merged into the manifest's, the report, its
    plots (report["plots"]) and `files` recorded with their sha256."""
    write_json_atomic(Path(ckpt) / REPORT, report)
    manifest.metrics.update(metrics)
    record_files(Path(ckpt), manifest, [REPORT, *report.get("plots", []), *files])
    return report


def read_report(ckpt: Path, manifest: CheckpointManifest) -> dict[str, Any]:
    """The evaluation's report.json, verified against the manifest; {} when the checkpoint was not evaluated."""
    if REPORT not in manifest.files:
        return {}
    return json.loads(verify_file(Path(ckpt), manifest, REPORT).read_text())


def load_tokenizer(ckpt: Path, manifest: CheckpointManifest, folder: str):
    """A Hugging Face tokenizer saved in CKPT/folder, after verifying every file there against the manifest."""
    from transformers import AutoTokenizer

    root = Path(ckpt) / folder
    listed = [name for name in manifest.files if name.startswith(f"{folder}/")]
    if not listed:
        raise CheckpointError(f"{root}: no tokenizer files listed in {MANIFEST}")
    for name in listed:
        verify_file(ckpt, manifest, name)
    for path in root.rglob("*"):
        if path.is_file() and str(path.relative_to(ckpt)) not in manifest.files:
            raise CheckpointError(f"{path}: not listed in {MANIFEST}; refusing an unrecorded file")
    return AutoTokenizer.from_pretrained(str(root), local_files_only=True)


def load_checkpoint(ckpt: Path) -> tuple[CheckpointManifest, dict[str, torch.Tensor]]:
    """Manifest and weights, each verified; raises CheckpointError naming the offending file."""
    manifest = read_manifest(ckpt)
    path = verify_file(ckpt, manifest, WEIGHTS)
    try:
        return manifest, load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None
