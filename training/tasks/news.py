"""News topic recipe (AG News): fine-tune a pretrained transformer encoder to tell World/Sports/Business/Sci-Tech.

Reads top to bottom: data (files, split, cleaning) -> tokenizer + model -> batches -> loss -> validation -> train
(engine) -> checkpoint (weights + tokenizer files) -> evaluation report beside a TF-IDF baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import Dataset

from training.checkpoint import (
    CheckpointManifest,
    record_files,
    save_checkpoint,
    save_tokenizer,
    write_report,
)
from training.checkpoint import load_tokenizer as load_checkpoint_tokenizer
from training.config import TrainConfig
from training.data.ag_news import LABELS, NewsSplit, cleaner, find_split, read_news_csv
from training.data.batching import pad_batch
from training.data.text_augment import augment_ids, parse_augment
from training.engine.trainer import FitResult, PipelineLoss, TrainingJob
from training.metrics.classification import CLASS_METRICS, class_metrics, classification_results
from training.models import load_model
from training.models.text_classifier import default_encoder, from_pretrained, model_config
from training.tasks.specs.news import SPEC

VAL_FRACTION, TRAIN_FRACTION = 0.1, 0.8
DEFAULTS = {"batch_size": 32, "lr": 1e-4, "epochs": 3}
TOKENIZER_DIR = "tokenizer"


# --- data ---------------------------------------------------------------------------------------------------------

@dataclass
class NewsData:
    train: NewsSplit
    val: NewsSplit
    test: NewsSplit
    source: dict[str, Any]  # files and split settings, enough to rebuild the same rows at evaluation


def _subset(split: NewsSplit, index: np.ndarray) -> NewsSplit:
    return NewsSplit([split.texts[i] for i in index], split.labels[index], split.path)


def data_source(cfg: TrainConfig) -> dict[str, Any]:
    """Training and evaluation files: --train-file/--eval-file, else train.csv/test.csv under the data folder.
    When both name the same file (only AG News test.csv is public here), `train_rows` of it, stratified by class,
    train and the rest evaluate."""
    opts = cfg.task_options
    data_dir = Path(cfg.data_dir) if cfg.data_dir else None
    train_file = opts.get("train_file") or (find_split(data_dir, "train") if data_dir else None)
    eval_file = opts.get("eval_file") or (find_split(data_dir, "test") if data_dir else None)
    if train_file is None or eval_file is None:
        raise FileNotFoundError("news needs --train-file and --eval-file, or --data-dir holding train.csv/test.csv")
    return {"train_file": str(Path(train_file).resolve()), "eval_file": str(Path(eval_file).resolve()),
            "train_rows": opts.get("train_rows"), "seed": cfg.seed}


def load_splits(source: dict[str, Any]) -> NewsData:
    train_all = read_news_csv(Path(source["train_file"]))
    if source["eval_file"] == source["train_file"]:
        rows = source["train_rows"] or int(TRAIN_FRACTION * len(train_all.texts))
        if not 0 < rows < len(train_all.texts):
            raise ValueError(f"--train-rows must be between 1 and {len(train_all.texts) - 1} for "
                             f"{source['train_file']}")
        train_idx, test_idx = train_test_split(np.arange(len(train_all.texts)), train_size=rows,
                                               stratify=train_all.labels, random_state=source["seed"])
        test = _subset(train_all, np.sort(test_idx))
        train_all = _subset(train_all, np.sort(train_idx))
    else:
        test = read_news_csv(Path(source["eval_file"]))
    fit_idx, val_idx = train_test_split(np.arange(len(train_all.texts)), test_size=VAL_FRACTION,
                                        stratify=train_all.labels, random_state=source["seed"])
    return NewsData(_subset(train_all, np.sort(fit_idx)), _subset(train_all, np.sort(val_idx)), test, source)


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


class EncodedTexts(Dataset):
    def __init__(self, ids: list[list[int]], labels: np.ndarray) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.ids[i], int(self.labels[i])


def make_collate(pad_id: int, augment: tuple[str, ...]):
    def collate(items: list[tuple[list[int], int]]) -> tuple[torch.Tensor, ...]:
        input_ids, mask = pad_batch([augment_ids(ids, augment) for ids, _ in items], pad_id)
        return input_ids, mask, torch.tensor([label for _, label in items])
    return collate


# --- loss and prediction ------------------------------------------------------------------------------------------

def outputs_loss(outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the model's logits (under --pp, the last stage's) against the batch's labels."""
    return nn.functional.cross_entropy(outputs.logits.float(), inputs["labels"])


def classification_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    input_ids, mask, labels = batch
    return outputs_loss(model(input_ids=input_ids, attention_mask=mask), {"labels": labels})


def model_inputs(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    input_ids, mask, labels = batch
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def predict_logits(model: nn.Module, ids: list[list[int]], pad_id: int, batch: int = 64) -> np.ndarray:
    """Logits in input order; batches are formed by length so little compute goes to padding."""
    device = next(model.parameters()).device
    order = np.argsort([len(seq) for seq in ids], kind="stable")
    chunks = []
    for start in range(0, len(ids), batch):
        input_ids, mask = pad_batch([ids[i] for i in order[start:start + batch]], pad_id)
        chunks.append(model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float().cpu())
    logits = torch.cat(chunks).numpy()
    restored = np.empty_like(logits)
    restored[order] = logits
    return restored


def make_validation(ids: list[list[int]], labels: np.ndarray, pad_id: int):
    def validate(model: nn.Module) -> dict[str, float]:
        logits = predict_logits(model, ids, pad_id)
        metrics = class_metrics(labels, logits.argmax(axis=1))
        loss = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
        return {"val_accuracy": metrics["accuracy"], "val_macro_f1": metrics["macro_f1"], "val_loss": loss}
    return validate


# --- train --------------------------------------------------------------------------------------------------------

@dataclass
class NewsRun:
    data: NewsData
    tokenizer: Any
    options: dict[str, Any]


def build_job(cfg: TrainConfig) -> tuple[TrainingJob, NewsRun, dict[str, Any]]:
    opts = cfg.task_options
    options = {"max_length": int(opts["max_length"]), "lowercase": bool(opts["lowercase"]),
               "remove_stopwords": bool(opts["remove_stopwords"]), "augment": list(parse_augment(opts["augment"]))}
    data = load_splits(data_source(cfg))
    model, tokenizer = from_pretrained(opts["model"] or default_encoder(), list(LABELS), opts["layers"])
    clean = cleaner(options)
    train_ids = encode(tokenizer, clean(data.train.texts), options["max_length"])
    val_ids = encode(tokenizer, clean(data.val.texts), options["max_length"])
    job = TrainingJob(
        model=model,
        train_set=EncodedTexts(train_ids, data.train.labels),
        loss=classification_loss,
        validate=make_validation(val_ids, data.val.labels, tokenizer.pad_token_id),
        monitor="val_accuracy", mode="max",
        collate=make_collate(tokenizer.pad_token_id, tuple(options["augment"])),
        lengths=[len(ids) for ids in train_ids],
        pipeline=PipelineLoss(model_inputs, outputs_loss),
        warmup_steps=100,
        **DEFAULTS,
    )
    return job, NewsRun(data, tokenizer, options), model_config(model)


def save(cfg: TrainConfig, run: NewsRun, config: dict[str, Any], result: FitResult) -> Path:
    out = Path(cfg.out)
    manifest = CheckpointManifest(
        task=SPEC.name,
        model=config,
        preprocessing={"labels": list(LABELS), "tokenizer_dir": TOKENIZER_DIR, **run.options},
        training=result.record(cfg, base_model=cfg.task_options["model"] or "all-MiniLM-L6-v2", data=run.data.source,
                               data_fingerprint={"train": run.data.train.fingerprint, "val": run.data.val.fingerprint},
                               rows={"train": len(run.data.train.texts), "val": len(run.data.val.texts),
                                     "test": len(run.data.test.texts)}),
        metrics=result.best_metrics,
    )
    save_checkpoint(out, manifest, result.best_state)
    record_files(out, manifest, save_tokenizer(out, run.tokenizer, TOKENIZER_DIR))
    return out


# --- evaluation report --------------------------------------------------------------------------------------------

def evaluate(ckpt: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """Accuracy, macro P/R/F1, per-class report, confusion matrix plot and the most confident mistakes, beside the
    TF-IDF + logistic-regression baseline trained on the same rows."""
    from training.baselines.tfidf import train_tfidf_baseline
    from training.reports.classification_plots import plot_confusion_matrix

    manifest, model = load_model(ckpt)
    pre = manifest.preprocessing
    source = dict(manifest.training["data"])
    if data_dir is not None:  # the same file names in another folder
        for key in ("train_file", "eval_file"):
            source[key] = str(Path(data_dir) / Path(source[key]).name)
    data = load_splits(source)
    tokenizer = load_checkpoint_tokenizer(ckpt, manifest, pre["tokenizer_dir"])

    clean = cleaner(pre)
    test_texts = clean(data.test.texts)
    test_ids = encode(tokenizer, test_texts, pre["max_length"])
    with torch.no_grad():
        logits = predict_logits(model, test_ids, tokenizer.pad_token_id)
        latency_ms = _latency_ms(model, test_ids[:20])
    labels = data.test.labels
    baseline_model, fit_seconds = train_tfidf_baseline(clean(data.train.texts + data.val.texts),
                                                       np.concatenate([data.train.labels, data.val.labels]),
                                                       seed=source["seed"])
    results, _ = classification_results(labels, logits, pre["labels"], 10, lambda i: {"text": data.test.texts[i][:300]})
    report: dict[str, Any] = {"task": SPEC.name, "subset": Path(source["eval_file"]).name, "test_rows": len(labels),
                              **results, "params": sum(p.numel() for p in model.parameters()),
                              "latency_ms": latency_ms, "train_seconds": manifest.training.get("train_seconds")}
    report["baseline"] = {"method": "TF-IDF word 1-2 grams + logistic regression (scikit-learn)",
                          **class_metrics(labels, baseline_model.predict(test_texts)),
                          "fit_seconds": round(fit_seconds, 2)}
    report["plots"] = [plot_confusion_matrix(ckpt / "confusion_matrix.png", np.array(results["confusion_matrix"]),
                                             pre["labels"]).name]
    return write_report(ckpt, manifest, report, {k: report[k] for k in CLASS_METRICS})


def _latency_ms(model: nn.Module, ids: list[list[int]]) -> float:
    """Median milliseconds to classify one text with the torch model (batch of 1) on this machine."""
    times = []
    for seq in ids:
        start = time.perf_counter()
        model(input_ids=torch.tensor([seq]), attention_mask=torch.ones(1, len(seq), dtype=torch.long))
        times.append((time.perf_counter() - start) * 1000)
    return round(float(np.median(times)), 2) if times else None


# --- generated data -----------------------------------------------------------------------------------------------

def synthesize(out: Path, seed: int = 0) -> list[Path]:
    from training.data.ag_news import synthesize_news

    return synthesize_news(out, seed=seed)
