"""A generator checkpoint as a Hugging Face folder, the form in which models travel between tools: config.json,
generation_config.json, the tokenizer (with its chat template), model.safetensors and a README.md model card, which
`AutoModelForCausalLM.from_pretrained(folder)` loads offline; a LoRA run's PEFT adapter beside it (adapter/), which
peft loads onto the base model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import (
    CheckpointManifest,
    load_tokenizer,
    read_manifest,
    record_files,
    verify_file,
)
from training.export import Exported

HF_DIR = "hf"
ADAPTER_DIR = "adapter"  # a LoRA run's PEFT adapter, saved by the recipe beside the merged weights


def export_hf(ckpt: Path, out: Path | None = None) -> Exported:
    """Write the folder (default CKPT/hf, then recorded in the manifest), with the max abs difference of the logits
    of the model loaded back from it against the checkpoint's (the generator spec's `--format hf`)."""
    from transformers import AutoModelForCausalLM

    from training.models import load_model

    ckpt = Path(ckpt)
    manifest, model = load_model(ckpt)
    tokenizer = load_tokenizer(ckpt, manifest, manifest.preprocessing["tokenizer_dir"])
    folder = Path(out) if out else ckpt / HF_DIR
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    if (ckpt / ADAPTER_DIR).is_dir():
        shutil.copytree(ckpt / ADAPTER_DIR, folder / ADAPTER_DIR)
    report = {}
    if "report.json" in manifest.files:
        report = json.loads(verify_file(ckpt, manifest, "report.json").read_text())
    (folder / "README.md").write_text(model_card(manifest, report, tokenizer))
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    probe = torch.randint(0, len(tokenizer), (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((loaded(probe).logits - model(probe).logits).abs().max())
    if out is None:
        record_files(ckpt, read_manifest(ckpt), sorted(str(p.relative_to(ckpt)) for p in folder.rglob("*")
                                                       if p.is_file()))
    return Exported(HF_DIR if out is None else str(Path(out).resolve()), diff,
                    "AutoModelForCausalLM.from_pretrained loads it", "of the logits, loaded back vs the checkpoint")


def model_card(manifest: CheckpointManifest, evaluation: dict[str, Any], tokenizer: Any) -> str:
    """The README.md of the folder: what the model is, what it learned from and how, how well it does (from the
    manifest's metrics and the evaluation report), its limits."""
    t, m = manifest.training, {**manifest.metrics, **evaluation}
    options = t.get("task_options", {})
    report = {}
    for key, label in (("test_perplexity", "test perplexity (WikiText-2, per token)"),
                       ("test_word_perplexity", "test perplexity per word"),
                       ("zero_shot_test_perplexity", "zero-shot test perplexity (the base model, scored the same)"),
                       ("val_perplexity", "validation perplexity (best epoch)")):
        if isinstance(m.get(key), int | float):
            report[label] = f"{m[key]:.2f}"
    if isinstance(m.get("improvement_vs_zero_shot"), float):
        report["test perplexity below zero-shot"] = f"{100 * m['improvement_vs_zero_shot']:.1f}%"
    tuned = (f"LoRA rank {t['lora_rank']}, merged into these weights (the adapter alone: adapter/)"
             if t.get("lora_rank") else "every weight")
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- modelyard",
        "- wikitext", *(["- lora"] if t.get("lora_rank") else []), "---", "",
        f"# {t.get('described') or 'modelyard generator'}", "",
        "A causal language model trained with modelyard (`modelyard train generator`) and exported with "
        "`modelyard export CKPT --format hf`.", "",
        "## Training", "",
        f"- base model: {t.get('base_model') or 'none (a GPT-2 trained from scratch)'}",
        f"- fine-tuning: {tuned}",
        f"- data: {t.get('data', {}).get('note', '')} ({t.get('data', {}).get('train', '')})",
        f"- tokens: {t.get('tokens', {})}; block size {options.get('block_size')}",
        f"- engine: backend {t.get('backend')} / {t.get('strategy')}, {t.get('nproc', 1) * t.get('nnodes', 1)} "
        f"process(es), precision {t.get('precision')}, {t.get('steps')} optimizer steps in "
        f"{t.get('train_seconds')} s, seed {t.get('seed')}",
        "", "## Evaluation", "",
        *(["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in report.items())]
          if report else ["Not evaluated (`modelyard evaluate CKPT` scores it)."]),
        "", "## Use", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(FOLDER)",
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
        "```", "",
        ("The tokenizer carries a chat template (`tokenizer.apply_chat_template`)." if tokenizer.chat_template
         else "The tokenizer has no chat template: this is a text-continuation model."), "",
        "## Intended use and limits", "",
        "Continuing English text in the style of Wikipedia articles (WikiText-2), for demonstrations and "
        "experiments. It is small: it writes fluent text with confident factual errors, has no safety tuning and "
        "should not be relied on for facts or advice.", "",
    ]
    return "\n".join(lines)
