"""A checkpoint as a model in BentoML's model store, and a Bento of its task's service: the form in which BentoML users
ship a model (`bentoml models list`, `bentoml list`, `bentoml serve TAG` from any folder, `bentoml containerize TAG`).

The model holds every file of the checkpoint with its manifest (the manifest also as the model's metadata), labelled
with the task, the headline metric and the fingerprint. Its version is a digest of the checkpoint's files, so importing
the same checkpoint again gives the same model, and building again from the same model and code the same Bento. The
Bento carries modelyard's `training` and `serving` packages, the pinned requirements (constraints.txt) and the model;
serving.bento_service serves it.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import NotFound

from training.checkpoint import MANIFEST, CheckpointManifest, read_report, verify_checkpoint
from training.export import serving_use
from training.model_card import CARD, write_card
from training.tasks.specs import task_spec

PROJECT = Path(__file__).resolve().parent.parent
PACKAGES = ("training", "serving")  # what serving a checkpoint imports of modelyard
ENTRY = "serving.bento_service:Service"


@dataclass
class Built:
    model: str  # the model's tag in BentoML's model store
    bento: str  # the Bento's tag
    path: Path  # the Bento's folder in BentoML's store


def model_tag(manifest: CheckpointManifest) -> str:
    files = "\n".join(f"{name} {entry.sha256}" for name, entry in sorted(manifest.files.items()))
    return f"modelyard-{manifest.task}:{hashlib.sha256(files.encode()).hexdigest()[:16]}"


def import_model(ckpt: Path) -> bentoml.Model:
    """The checkpoint in BentoML's model store (verified first; an existing import of the same files is reused)."""
    ckpt = Path(ckpt)
    manifest = verify_checkpoint(ckpt)
    spec = task_spec(manifest.task)
    if spec.service is None:
        raise ValueError(f"{ckpt}: a {spec.name} checkpoint; that task has no service to build a Bento of")
    if spec.runtimes[0] == "onnx" and spec.onnx_file not in manifest.files:
        raise ValueError(f"{ckpt / spec.onnx_file}: missing (the Bento serves ONNX Runtime); run `modelyard export "
                         f"{ckpt}` first")
    tag = model_tag(manifest)
    try:
        return bentoml.models.get(tag)
    except NotFound:
        pass
    key, _ = spec.headline
    fingerprint = manifest.training.get("fingerprint") or {}
    labels = {"task": spec.name, "headline": f"{key}={manifest.metrics.get(key)}",
              **{f"{part}_digest": digest[:16] for part, digest in fingerprint.items()}}
    metadata = {"manifest": _without_none(manifest.model_dump(mode="json"))}  # BentoML refuses None in metadata
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
        for name in (MANIFEST, *manifest.files):
            target = Path(model.path) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ckpt / name, target)
        if CARD not in manifest.files:  # exported before exports wrote one
            write_card(Path(model.path), manifest, read_report(ckpt, manifest), serving_use(spec.name, spec.onnx_file))
    return bentoml.models.get(tag)


def build_bento(ckpt: Path) -> Built:
    """Import the checkpoint and build a Bento of its task's service on that model."""
    model = import_model(ckpt)
    task = model.info.labels["task"]
    with tempfile.TemporaryDirectory(prefix="modelyard-bento-") as folder:
        context = Path(folder)
        for package in PACKAGES:
            shutil.copytree(PROJECT / package, context / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy(PROJECT / "constraints.txt", context / "requirements.txt")
        code = hashlib.sha256()
        for path in sorted(context.rglob("*")):
            if path.is_file():
                code.update(str(path.relative_to(context)).encode() + path.read_bytes())
        version = hashlib.sha256(f"{model.tag}\n{code.hexdigest()}".encode()).hexdigest()[:16]
        name = bento_name(task)
        try:
            bento = bentoml.get(f"{name}:{version}")
        except NotFound:
            bento = bentoml.bentos.build(
                ENTRY, name=name, version=version, build_ctx=str(context),
                description=f"modelyard {task}: {task_spec(task).summary}",
                labels={"task": task, "model": str(model.tag)},
                include=[f"{package}/**" for package in PACKAGES] + ["requirements.txt"],
                python={"requirements_txt": "requirements.txt", "lock_packages": False},
                models=[str(model.tag)], args={"task": task, "model": str(model.tag)})
    return Built(str(model.tag), str(bento.tag), Path(bento.path))


def bento_name(task: str) -> str:
    """The Bento's name: its service's BentoML name (news_classifier, ...)."""
    from serving.server import service_module

    module = service_module(task)
    return getattr(module, module.SERVICE).name


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value
