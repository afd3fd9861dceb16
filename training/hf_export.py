"""A checkpoint of a transformers model as a Hugging Face folder, the form in which models travel between tools:
config.json, the tokenizer, model.safetensors and a README.md model card, which transformers loads offline
(`AutoModelForCausalLM.from_pretrained(folder)` for the generator, `pipeline("text-classification", model=folder)`
for the news classifier, its labels in config.json's id2label); a LoRA run's PEFT adapter beside it (adapter/), which
peft loads onto the base model. The `--format hf` of the specs whose model is a transformers one."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from training.checkpoint import load_tokenizer, read_manifest, read_report, record_files
from training.export import Exported
from training.model_card import write_card

HF_DIR = "hf"
ADAPTER_DIR = "adapter"  # a LoRA run's PEFT adapter, saved by the recipe beside the merged weights


def export_hf(ckpt: Path, out: Path | None = None) -> Exported:
    """Write the folder (default CKPT/hf, then recorded in the manifest), with the max abs difference of the logits
    of the model loaded back from it against the checkpoint's."""
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
    generative = type(model).__name__.endswith("ForCausalLM")
    write_card(folder, manifest, read_report(ckpt, manifest), _use(generative, tokenizer), library="transformers",
               pipeline_tag="text-generation" if generative else "text-classification")
    loaded = type(model).from_pretrained(str(folder), local_files_only=True).eval()
    probe = torch.randint(0, len(tokenizer), (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((loaded(probe).logits - model(probe).logits).abs().max())
    if out is None:
        record_files(ckpt, read_manifest(ckpt), sorted(str(p.relative_to(ckpt)) for p in folder.rglob("*")
                                                       if p.is_file()))
    loader = "AutoModelForCausalLM.from_pretrained" if generative else 'pipeline("text-classification")'
    return Exported(HF_DIR if out is None else str(Path(out).resolve()), diff, f"{loader} loads it",
                    "of the logits, loaded back vs the checkpoint")


def _use(generative: bool, tokenizer) -> list[str]:
    if not generative:
        return ["```python", "from transformers import pipeline",
                'classify = pipeline("text-classification", model=FOLDER)',
                'classify("Stocks rallied as the central bank held rates")  # [{"label": ..., "score": ...}]', "```"]
    return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "model = AutoModelForCausalLM.from_pretrained(FOLDER)",
            "tokenizer = AutoTokenizer.from_pretrained(FOLDER)", "```", "",
            "The tokenizer carries a chat template (`tokenizer.apply_chat_template`)." if tokenizer.chat_template
            else "The tokenizer has no chat template: this is a text-continuation model."]
