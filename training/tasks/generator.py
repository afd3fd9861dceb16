"""Text generator recipe (WikiText-2): fine-tune a causal language model (SmolLM2, any Hugging Face causal LM, or
a GPT-2 built from scratch), all weights or LoRA adapters, and report perplexity with samples.

Reads top to bottom: data (splits; without a train split, valid trains and test evaluates) -> tokenizer + model ->
token blocks -> loss (next-token cross-entropy) -> validation perplexity -> train (engine) -> checkpoint (merged
weights + tokenizer) -> evaluation: sliding-window perplexity, zero-shot beside fine-tuned, samples and their quality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.checkpoint import (
    CheckpointManifest,
    record_files,
    save_checkpoint,
    save_tokenizer,
    write_report,
)
from training.checkpoint import load_tokenizer as load_checkpoint_tokenizer
from training.config import TrainConfig
from training.data.lm_blocks import TokenBlocks, token_ids
from training.data.wikitext import WikiSplit, detokenize, find_split, read_split
from training.engine.trainer import EPOCHS_DIR, FitResult, PipelineLoss, TrainingJob, epoch_snapshots
from training.hf_export import ADAPTER_DIR
from training.models import build_model, load_model
from training.models import causal_lm as lm
from training.tasks.specs.generator import SPEC

TOKENIZER_DIR = "tokenizer"
VAL_FRACTION = 0.1  # of the articles, held out for validation when there is no train split
# Openings in WikiText's style (an article title, then its first words), the same for every report.
PROMPTS = (
    "= Valkyria Chronicles =\n\nValkyria Chronicles is a tactical role-playing game",
    "= The River Thames =\n\nThe River Thames flows through",
    "= Battle of Hastings =\n\nThe Battle of Hastings was fought on",
    "= Homarus gammarus =\n\nHomarus gammarus, known as the European lobster,",
)
SAMPLING = {"do_sample": True, "temperature": 0.8, "top_k": 50, "top_p": 0.95, "repetition_penalty": 1.1,
            "max_new_tokens": 60, "seed": 0}


# --- data ---------------------------------------------------------------------------------------------------------

@dataclass
class Corpus:
    train: list[str]
    val: list[str]
    evaluated: dict[str, WikiSplit]  # split name -> the articles evaluation scores
    source: dict[str, Any]  # files and how they were used, for the manifest and the report


def load_corpus(data_dir: Path) -> Corpus:
    """train/valid/test as found. Without a train split (WikiText-2 here has only valid and test), valid's
    articles train (the last 10% validate) and test evaluates; the report says so."""
    found = {split: find_split(data_dir, split) for split in ("train", "valid", "test")}
    if found["test"] is None:
        raise FileNotFoundError(f"{data_dir}: no wiki.test.tokens or wiki.test.raw (plain or .xz); the generator "
                                f"evaluates on WikiText's test split")
    if found["train"] is None and found["valid"] is None:
        raise FileNotFoundError(f"{data_dir}: neither wiki.train.* nor wiki.valid.* found; nothing to train on")
    test = read_split(found["test"], "test")
    if found["train"] is not None:
        train, valid = read_split(found["train"], "train"), read_split(found["valid"], "valid")
        source = {"train": str(train.path), "val": str(valid.path), "note": "trained on train, validated on valid"}
        return Corpus(train.articles, valid.articles, {"valid": valid, "test": test}, source)
    valid = read_split(found["valid"], "valid")
    cut = max(1, int(len(valid.articles) * (1 - VAL_FRACTION)))
    if cut >= len(valid.articles):
        raise ValueError(f"{valid.path}: {len(valid.articles)} article(s); need at least 2 to train and validate")
    source = {"train": str(valid.path), "val": str(valid.path),
              "note": f"no train split in {data_dir}: the first {cut} of valid's {len(valid.articles)} articles "
                      f"trained, the other {len(valid.articles) - cut} validated; test evaluates"}
    return Corpus(valid.articles[:cut], valid.articles[cut:], {"test": test}, source)


def prepare(articles: list[str], detokenized: bool) -> list[str]:
    return [detokenize(a) for a in articles] if detokenized else list(articles)


# --- model and tokenizer --------------------------------------------------------------------------------------------

def default_tokenizer_folder(data_dir: Path) -> Path | None:
    import os

    candidates = [Path(data_dir).parent / "gpt2_tokenizer"]
    if os.environ.get("MODELYARD_DATA"):
        candidates.insert(0, Path(os.environ["MODELYARD_DATA"]) / "gpt2_tokenizer")
    return next((c for c in candidates if (c / "vocab.json").is_file() and (c / "merges.txt").is_file()), None)


def model_and_tokenizer(opts: dict[str, Any], data_dir: Path, train_text: list[str]) -> tuple[nn.Module, Any, str]:
    """The model to train, its tokenizer, and a line saying what they are."""
    if opts["model"]:
        model, tokenizer = lm.load_pretrained(opts["model"])
        return model, tokenizer, f"pretrained {opts['model']}"
    folder = Path(opts["tokenizer"]) if opts["tokenizer"] else default_tokenizer_folder(data_dir)
    if folder is not None:
        tokenizer, origin = lm.gpt2_tokenizer(folder), f"GPT-2 BPE from {folder}"
    else:
        tokenizer, origin = lm.train_byte_bpe(train_text), "a byte-level BPE learned from the training text"
    return lm.from_scratch(opts["size"], tokenizer), tokenizer, f"GPT-2 {opts['size']} from scratch, {origin}"


# --- loss and validation ------------------------------------------------------------------------------------------

def outputs_loss(outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy, computed by the model from the labels it was given (the inputs; it shifts them):
    under colossalai hybrid --tp the logits are split across ranks by vocabulary, and only the model's own loss
    (shardformer's distributed cross-entropy) sees all of them; under --pp the last stage's."""
    return outputs.loss.float()


def model_inputs(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    (ids,) = batch
    # An explicit mask: shardformer's GPT-2 forward fails without one (ARCHITECTURE.md, known bugs).
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    inputs = model_inputs(batch)
    return outputs_loss(model(**inputs), inputs)


def make_validation(blocks: TokenBlocks, batch: int = 8):
    def validate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for start in range(0, len(blocks), batch):
            ids = torch.stack([blocks[i][0] for i in range(start, min(start + batch, len(blocks)))]).to(device)
            loss = lm_loss(model, (ids,))
            total += float(loss) * ids.numel()
            count += ids.numel()
        loss = total / max(count, 1)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}
    return validate


# --- train --------------------------------------------------------------------------------------------------------

@dataclass
class GeneratorRun:
    model: nn.Module
    tokenizer: Any
    corpus: Corpus
    described: str
    tokens: dict[str, int]


def build_job(cfg: TrainConfig) -> tuple[TrainingJob, GeneratorRun, dict[str, Any]]:
    opts = cfg.task_options
    corpus = load_corpus(Path(cfg.data_dir))
    train_text = prepare(corpus.train, opts["detokenize"])
    model, tokenizer, described = model_and_tokenizer(opts, Path(cfg.data_dir), train_text)
    block = int(opts["block_size"])
    if block > lm.context_length(model):
        raise ValueError(f"--block-size {block} is longer than the model's context ({lm.context_length(model)})")
    train = TokenBlocks(token_ids(tokenizer, train_text, "tokenize train").ids, block)
    val_ids = token_ids(tokenizer, prepare(corpus.val, opts["detokenize"]), "tokenize val").ids
    val = TokenBlocks(val_ids[: max(opts["val_tokens"], block)], block)
    if opts["lora"]:
        model = lm.with_lora(model, opts["lora"])
    pretrained = bool(opts["model"])
    # LoRA at 2e-3: the demo's 3 minutes (36-42 steps here, 20 of them warm-up) took SmolLM2's test perplexity
    # 8.7% below zero-shot at 5e-4, 10.3% at 1e-3 and 14.0% at 2e-3, with samples as varied (distinct-2 0.94-0.98)
    lr = 2e-3 if opts["lora"] else 5e-5 if pretrained else 1e-3
    job = TrainingJob(
        model=model, train_set=train, loss=lm_loss, validate=make_validation(val),
        monitor="val_loss", mode="min", batch_size=8, lr=lr, weight_decay=0.0 if opts["lora"] else 0.01,
        epochs=3 if pretrained else 20, warmup_steps=20 if pretrained else 50,
        pipeline=PipelineLoss(model_inputs, outputs_loss),
        snapshot_epochs=not pretrained,  # small models from scratch: test perplexity per epoch, against time
    )
    tokens = {"train": len(train) * block, "val": len(val) * block}
    return job, GeneratorRun(model, tokenizer, corpus, described, tokens), lm.model_config(model)


def save(cfg: TrainConfig, run: GeneratorRun, config: dict[str, Any], result: FitResult) -> Path:
    out = Path(cfg.out)
    opts = cfg.task_options
    # A fresh model for the best weights: the trained one may be split across ranks (shardformer replaced its
    # layers, whose state_dict is a collective that only rank 0 would call here).
    fresh = build_model(config)
    if opts["lora"]:
        fresh = lm.with_lora(fresh, opts["lora"])
    fresh.load_state_dict(result.best_state)
    adapter = []
    if opts["lora"]:  # the adapter alone too, for peft users (PeftModel.from_pretrained(base, CKPT/adapter))
        fresh.save_pretrained(str(out / ADAPTER_DIR))
        adapter = sorted(str(p.relative_to(out)) for p in (out / ADAPTER_DIR).rglob("*") if p.is_file())
    plain = lm.merged(fresh)  # LoRA folded in: the checkpoint is the plain transformers model
    manifest = CheckpointManifest(
        task=SPEC.name,
        model=config,
        preprocessing={"tokenizer_dir": TOKENIZER_DIR, "detokenize": opts["detokenize"],
                       "block_size": opts["block_size"], "eos_token_id": run.tokenizer.eos_token_id},
        training=result.record(cfg, base_model=opts["model"], described=run.described, lora_rank=opts["lora"],
                               data={**run.corpus.source, "test": str(run.corpus.evaluated["test"].path)},
                               tokens=run.tokens,
                               tokens_per_second=round(result.samples_per_second * opts["block_size"], 1),
                               history=[{k: r[k] for k in ("epoch", "val_loss", "val_perplexity", "epoch_seconds")}
                                        for r in result.history]),
        metrics=result.best_metrics,
    )
    save_checkpoint(out, manifest, plain.state_dict())
    record_files(out, manifest, save_tokenizer(out, run.tokenizer, TOKENIZER_DIR) + adapter + epoch_snapshots(out))
    return out


# --- evaluation report --------------------------------------------------------------------------------------------

def evaluate(ckpt: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """Sliding-window perplexity (token and word level) on the evaluated splits, the starting model's zero-shot
    perplexity beside it, samples for fixed prompts with their quality measures, and plots."""
    from training.metrics.text_quality import quality
    from training.reports.generator_plots import plot_perplexity_over_time

    manifest, model = load_model(ckpt)
    pre, training, opts = manifest.preprocessing, manifest.training, manifest.training["task_options"]
    tokenizer = load_checkpoint_tokenizer(ckpt, manifest, pre["tokenizer_dir"])
    corpus = load_corpus(Path(data_dir) if data_dir else Path(training["data_dir"]))
    context = min(opts["eval_context"] or lm.context_length(model), lm.context_length(model), 1024)
    stride = opts["stride"] or max(1, context // 2)
    # scored in the precision it trained in: bf16 halves the time here and moved SmolLM2's test perplexity by
    # 0.1% (17.076 in fp32, 17.092); a model trained in fp16 on a GPU is scored in bf16 on the CPU
    scored_in = "fp32" if training.get("precision", "fp32") == "fp32" else "bf16"

    def score(net: nn.Module, tok: Any, split: WikiSplit, label: str) -> dict[str, Any]:
        corpus_ids = token_ids(tok, prepare(split.articles, pre["detokenize"]), f"tokenize {split.name}")
        ids, articles = corpus_ids.head(opts["eval_tokens"])
        words = sum(len(a.split()) for a in split.articles[:articles])
        from training.metrics.perplexity import sliding_perplexity

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=scored_in == "bf16"):
            result = sliding_perplexity(net, ids, context, stride, words, label=label).as_dict()
        return {**result, "articles": articles, "of_articles": len(split.articles), "scored_in": scored_in}

    report: dict[str, Any] = {"task": SPEC.name, "subset": ", ".join(corpus.evaluated), "model": training["described"],
                              "data_note": training["data"]["note"], "context": context, "stride": stride,
                              "params": sum(p.numel() for p in model.parameters()),
                              "train_seconds": training.get("train_seconds"), "splits": {}}
    with torch.no_grad():
        for name, split in corpus.evaluated.items():
            report["splits"][name] = {"fine_tuned": score(model, tokenizer, split, f"perplexity {name}")}
    report["test_perplexity"] = report["splits"]["test"]["fine_tuned"]["perplexity"]
    report["test_word_perplexity"] = report["splits"]["test"]["fine_tuned"]["word_perplexity"]
    if training.get("base_model"):  # the starting model, scored the same way
        base, base_tokenizer = lm.load_pretrained(training["base_model"])
        with torch.no_grad():
            for name, split in corpus.evaluated.items():
                report["splits"][name]["zero_shot"] = score(base, base_tokenizer, split, f"zero-shot {name}")
        zero = report["splits"]["test"]["zero_shot"]["perplexity"]
        report["zero_shot_test_perplexity"] = zero
        report["improvement_vs_zero_shot"] = round(1 - report["test_perplexity"] / zero, 4)
        del base
    report["samples"] = samples(model, tokenizer)
    report["sample_quality"] = quality([s["continuation"] for s in report["samples"]])
    report["sampling"] = SAMPLING
    report["plots"] = []
    curve = epoch_curve(ckpt, manifest, corpus.evaluated["test"], tokenizer, context, stride, score)
    if curve:
        report["test_perplexity_by_epoch"] = curve
        report["plots"].append(plot_perplexity_over_time(ckpt / "perplexity_vs_time.png", curve,
                                                          training["described"]).name)
    return write_report(ckpt, manifest, report, {k: report[k] for k in ("test_perplexity", "test_word_perplexity")})


def samples(model: nn.Module, tokenizer: Any) -> list[dict[str, str]]:
    """A continuation of each fixed prompt under SAMPLING (transformers' generate, KV cache)."""
    settings = {k: v for k, v in SAMPLING.items() if k != "seed"}
    out = []
    for i, prompt in enumerate(PROMPTS):
        torch.manual_seed(SAMPLING["seed"] + i)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            generated = model.generate(**ids, **settings, pad_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(generated[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        out.append({"prompt": prompt, "continuation": text})
    return out


def epoch_curve(ckpt: Path, manifest: CheckpointManifest, test: WikiSplit, tokenizer: Any, context: int,
                stride: int, score) -> list[dict[str, float]]:
    """Test perplexity of each epoch's weights against the training time spent by then (models from scratch)."""
    from training.checkpoint import verify_file

    history = manifest.training.get("history", [])
    snapshots = sorted((ckpt / EPOCHS_DIR).glob("epoch-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]))
    if not snapshots:
        return []
    from safetensors.torch import load_file

    model = build_model(manifest.model)
    curve, elapsed = [], 0.0
    for record, path in zip(history, snapshots, strict=False):
        elapsed += record["epoch_seconds"]
        model.load_state_dict(load_file(str(verify_file(ckpt, manifest, str(path.relative_to(ckpt))))))
        with torch.no_grad():
            result = score(model.eval(), tokenizer, test, f"epoch {record['epoch']}")
        curve.append({"epoch": record["epoch"], "seconds": round(elapsed, 1), "perplexity": result["perplexity"]})
    return curve


# --- generated data -----------------------------------------------------------------------------------------------

def synthesize(out: Path, seed: int = 0) -> list[Path]:
    from training.data.wikitext import synthesize_wikitext

    return synthesize_wikitext(out, seed=seed)
