"""The model card (README.md) that travels with every export: the checkpoint folder beside its ONNX model, a Hugging
Face folder, the model a Bento serves. What the model is, what it learned from and how, how well it does beside its
baseline, how to use it, its intended use and known limits, and the sha256 of its weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.checkpoint import WEIGHTS, CheckpointManifest
from training.tasks.specs import task_spec

CARD = "README.md"


def model_card(manifest: CheckpointManifest, report: dict[str, Any], use: list[str],
               library: str = "modelyard", pipeline_tag: str | None = None) -> str:
    """The card's text; `use` is the "Use" section's lines (code included), which depend on the export's form, as do
    the library and pipeline tag its metadata names (the Hugging Face Hub reads them)."""
    spec, t = task_spec(manifest.task), manifest.training
    measured = {**manifest.metrics, **report}
    key, label = spec.headline
    rows = [f"| {label if name == key else name} | {fmt_metric(measured[name])} |"
            for name in dict.fromkeys((key, *spec.compared)) if isinstance(measured.get(name), int | float)]
    baseline = report.get("baseline") if isinstance(report.get("baseline"), dict) else {}
    beside = [f"| {name} | {fmt_metric(measured[name])} | {fmt_metric(value)} |" for name, value in baseline.items()
              if isinstance(value, int | float) and name in measured]
    data = t.get("data") or {"folder": t.get("data_dir"), "subset": t.get("subset")}
    lines = [
        "---", f"library_name: {library}", *([f"pipeline_tag: {pipeline_tag}"] if pipeline_tag else []),
        "tags:", "- modelyard", f"- {spec.name}", "---", "",
        f"# {t.get('described') or f'modelyard {spec.name} model'}", "",
        f"{spec.summary} Trained with modelyard (`modelyard train {spec.name}`).", "",
        "## Training", "",
        f"- model: {manifest.model.get('arch')}, base {t.get('base_model') or 'none (trained from scratch)'}"
        + (f", LoRA rank {t['lora_rank']} merged into these weights" if t.get("lora_rank") else ""),
        f"- data: {'generated data in the real format, not the real dataset; ' if t.get('synthetic') else ''}"
        f"{json.dumps(data, default=str)}",
        f"- engine: backend {t.get('backend')} / {t.get('strategy')}, {t.get('nproc', 1) * t.get('nnodes', 1)} "
        f"process(es), precision {t.get('precision')}, {t.get('epochs_run')} epoch(s), {t.get('steps')} optimizer "
        f"steps in {t.get('train_seconds')} s, seed {t.get('seed')}",
        f"- weights: {WEIGHTS}, sha256 {manifest.files[WEIGHTS].sha256}",
        "", "## Evaluation", "",
        *(["| measure | value |", "|---|---|", *rows] if rows else
          ["Not evaluated (`modelyard evaluate CKPT` writes report.json)."]),
        *(["", f"Beside the baseline ({baseline.get('method', 'see report.json')}):", "",
           "| measure | this model | baseline |", "|---|---|---|", *beside] if beside else []),
        "", "## Use", "", *use, "",
        "## Intended use and limits", "", spec.limits, "",
    ]
    return "\n".join(lines)


def write_card(folder: Path, manifest: CheckpointManifest, report: dict[str, Any], use: list[str],
               **metadata: Any) -> Path:
    path = Path(folder) / CARD
    path.write_text(model_card(manifest, report, use, **metadata))
    return path


def fmt_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"
    return "-" if value is None else str(value)
