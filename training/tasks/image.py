"""Image recipe (CIFAR-10): classify 32x32 photos into ten classes, from scratch or from pretrained weights.

Reads top to bottom: data (any CIFAR-10 layout, decoded once, stratified validation split, normalisation from the
training images) -> model -> loss (augmentation of whole batches on the device, label smoothing) -> validation ->
train (engine) -> checkpoint -> evaluation report (test-time flip averaging, per-class metrics, plots).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.checkpoint import CheckpointManifest, load_checkpoint, record_files, save_checkpoint, write_report
from training.config import TrainConfig
from training.data.cifar10 import CifarData, load_cifar
from training.data.image_augment import Augment
from training.engine.trainer import EPOCHS_DIR, FitResult, TrainingJob, epoch_snapshots
from training.metrics.classification import CLASS_METRICS, classification_results
from training.models import build_model
from training.models.image import image_model_config, view_averaged
from training.tasks.specs.image import SPEC

VAL_FRACTION = 0.1
DEFAULTS = {"batch_size": 256, "epochs": 26, "optimizer": "sgd", "lr": 0.2, "weight_decay": 5e-4,
            "optimizer_defaults": {"adamw": {"lr": 2e-3, "weight_decay": 0.05}}}


# --- data ---------------------------------------------------------------------------------------------------------

@dataclass
class ImageData:
    cifar: CifarData
    fit_index: np.ndarray  # rows of cifar.train_images that train
    val_index: np.ndarray  # rows held out for validation (early stopping, model selection)
    mean: list[float]  # per channel, of the training rows, in 0..1
    std: list[float]


def load_data(data_dir: Path, seed: int, train_images: int | None = None) -> ImageData:
    """A stratified validation split of the training images; normalisation statistics from the rest. The test
    split is left to evaluation."""
    from sklearn.model_selection import train_test_split

    cifar = load_cifar(data_dir)
    rows = np.arange(len(cifar.train_labels))
    if train_images is not None and train_images < len(rows):
        rows, _ = train_test_split(rows, train_size=train_images, stratify=cifar.train_labels, random_state=seed)
    fit, val = train_test_split(rows, test_size=VAL_FRACTION, stratify=cifar.train_labels[rows], random_state=seed)
    fit, val = np.sort(fit), np.sort(val)
    pixels = cifar.train_images[fit].reshape(-1, 3).astype(np.float64) / 255.0
    return ImageData(cifar, fit, val, pixels.mean(axis=0).tolist(), pixels.std(axis=0).tolist())


class ImageBatches(torch.utils.data.Dataset):
    """uint8 images and labels, fetched a whole batch at a time (`__getitems__`): no per-image Python."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


def keep_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch  # __getitems__ already stacked it


def to_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) -> normalised float (N, 3, 32, 32), channels-last in memory (what oneDNN convolves
    fastest)."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    return ((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).contiguous(memory_format=torch.channels_last)


# --- model --------------------------------------------------------------------------------------------------------

WHITENING_IMAGES = 5000  # training images the whitening stem's patch statistics come from


def build_image_model(cfg: TrainConfig, data: ImageData) -> tuple[nn.Module, dict[str, Any], dict[str, Any] | None]:
    from training.models.pretrained import load_pretrained

    opts = cfg.task_options
    config = image_model_config(opts["model"], len(data.cifar.classes), opts["width"])
    model = build_model(config).to(memory_format=torch.channels_last)
    if hasattr(model, "fit_to_data"):
        rows = data.fit_index[:WHITENING_IMAGES]
        model.fit_to_data(to_input(torch.from_numpy(data.cifar.train_images[rows]), torch.tensor(data.mean),
                                   torch.tensor(data.std)))
    start = load_pretrained(model, Path(opts["pretrained"])) if opts["pretrained"] else None
    return model, config, start


# --- loss and validation ------------------------------------------------------------------------------------------

class AugmentedLoss:
    """Cross-entropy with label smoothing on a freshly augmented batch (training only)."""

    def __init__(self, augment: Augment, mean: list[float], std: list[float], smoothing: float) -> None:
        self.augment, self.smoothing = augment, smoothing
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        images, labels = batch
        x = self.augment(to_input(images, self.mean.to(images.device), self.std.to(images.device)))
        return F.cross_entropy(model(x).float(), labels, label_smoothing=self.smoothing)


def predict_logits(model: nn.Module, images: np.ndarray, mean: list[float], std: list[float],
                   batch: int = 500) -> np.ndarray:
    """Logits per image (of `model` as given: wrap it in view_averaged for averaged views); the caller sets
    eval/no_grad."""
    device = next(model.parameters()).device
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    out = []
    for start in range(0, len(images), batch):
        x = to_input(torch.from_numpy(images[start:start + batch]).to(device), mean_t, std_t)
        out.append(model(x).float().cpu())
    return torch.cat(out).numpy()


def make_validation(images: np.ndarray, labels: np.ndarray, mean: list[float], std: list[float]):
    def validate(model: nn.Module) -> dict[str, float]:
        logits = predict_logits(model, images, mean, std)
        loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
        return {"val_accuracy": float((logits.argmax(1) == labels).mean()), "val_loss": loss}
    return validate


# --- train --------------------------------------------------------------------------------------------------------

@dataclass
class ImageRun:
    data: ImageData
    start: dict[str, Any] | None  # what --pretrained loaded
    options: dict[str, Any]


def build_job(cfg: TrainConfig) -> tuple[TrainingJob, ImageRun, dict[str, Any]]:
    opts = cfg.task_options
    augment = Augment.parse(opts["augment"], opts["augment_strength"])
    data = load_data(Path(cfg.data_dir), cfg.seed, opts["train_images"])
    cifar = data.cifar
    model, config, start = build_image_model(cfg, data)
    head = f"{model.HEAD}."
    freeze = int(opts["freeze_epochs"])
    if freeze and start is None:
        raise ValueError("--freeze-epochs trains a new head on pretrained weights; give --pretrained FILE")
    job = TrainingJob(
        model=model,
        train_set=ImageBatches(cifar.train_images[data.fit_index], cifar.train_labels[data.fit_index]),
        loss=AugmentedLoss(augment, data.mean, data.std, opts["label_smoothing"]),
        validate=make_validation(cifar.train_images[data.val_index], cifar.train_labels[data.val_index],
                                 data.mean, data.std),
        monitor="val_accuracy", mode="max",
        collate=keep_batch,
        # group 1: the classifier head; group 0 (the body) stands still for the first --freeze-epochs epochs
        group_of=lambda name: 1 if name.startswith(head) else 0,
        lr_scales=lambda epoch: (0.0 if epoch < freeze else 1.0, 1.0),
        snapshot_epochs=True,
        warmup_steps=100,
        lr_floor=0.0,  # +0.3% validation accuracy after 8 epochs against ending at 10% of the peak
        **DEFAULTS,
    )
    return job, ImageRun(data, start, {"augment": list(augment.kinds), "augment_strength": augment.strength}), config


def save(cfg: TrainConfig, run: ImageRun, config: dict[str, Any], result: FitResult) -> Path:
    data = run.data
    manifest = CheckpointManifest(
        task=SPEC.name,
        model=config,
        preprocessing={"classes": list(data.cifar.classes), "image_size": 32, "mean": data.mean, "std": data.std,
                       "tta": bool(cfg.task_options["tta"]), "tta_shift": int(cfg.task_options["tta_shift"]),
                       **run.options},
        training=result.record(cfg, data_layout=data.cifar.layout, data_fingerprint=data.cifar.fingerprint,
                               images={"train": len(data.fit_index), "val": len(data.val_index),
                                       "test": len(data.cifar.test_labels)},
                               pretrained=run.start, history=result.history),
        metrics=result.best_metrics,
    )
    out = Path(cfg.out)
    save_checkpoint(out, manifest, result.best_state)
    record_files(out, manifest, epoch_snapshots(out))
    return out


# --- evaluation report --------------------------------------------------------------------------------------------

EXAMPLES_DIR = "examples"


def evaluate(ckpt: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """Test accuracy (with test-time flip averaging when the checkpoint asks for it), per-class precision/recall/F1,
    confusion matrix, the most confident mistakes, loss/accuracy curves, test accuracy per epoch against training
    time, images/s; and the pretrained starting point's test accuracy when there was one."""
    from training.reports.classification_plots import plot_confusion_matrix
    from training.reports.image_plots import plot_accuracy_vs_time, plot_mistakes, plot_training_curves

    manifest, weights = load_checkpoint(ckpt)
    pre, trained = manifest.preprocessing, manifest.training
    cifar = load_cifar(Path(data_dir or trained["data_dir"]))
    classes = pre["classes"]
    model = _eval_model(manifest, weights)
    images, labels = cifar.test_images, cifar.test_labels
    with torch.no_grad():
        logits = predict_logits(model, images, pre["mean"], pre["std"])
        seconds = _timed(lambda: predict_logits(model, images[:1000], pre["mean"], pre["std"]))
    results, worst = classification_results(labels, logits, classes, 32, lambda i: {"index": i})
    report: dict[str, Any] = {"task": SPEC.name, "subset": f"CIFAR-10 test ({cifar.layout})",
                              "test_images": len(labels), **results, "tta": pre["tta"],
                              "tta_shift": pre.get("tta_shift", 0),
                              "params": sum(p.numel() for p in model.parameters()),
                              "train_images_per_second": trained.get("samples_per_second"),
                              "inference_images_per_second": round(min(1000, len(images)) / seconds, 1),
                              "train_seconds": trained.get("train_seconds")}
    mistaken = results["most_confident_mistakes"]
    if trained.get("pretrained"):
        start = build_model(manifest.model)
        from training.models.pretrained import load_pretrained

        load_pretrained(start, Path(trained["pretrained"]["file"]))
        with torch.no_grad():
            start_logits = predict_logits(view_averaged(start.eval(), pre), images, pre["mean"], pre["std"])
        report["pretrained_accuracy"] = float((start_logits.argmax(1) == labels).mean())
    plots = [plot_confusion_matrix(ckpt / "confusion_matrix.png", np.array(results["confusion_matrix"]), classes,
                                   "test images"),
             plot_mistakes(ckpt / "mistakes.png", images[worst], [m["true"] for m in mistaken],
                           [m["predicted"] for m in mistaken], [m["confidence"] for m in mistaken]),
             plot_training_curves(ckpt / "training_curves.png", trained["history"])]
    scored_in = "bf16" if trained.get("precision") == "bf16" else "fp32"
    curve = _test_accuracy_per_epoch(ckpt, manifest, images, labels, scored_in)
    if curve:
        report["test_accuracy_per_epoch"] = curve
        report["per_epoch_scored_in"] = scored_in
        plots.append(plot_accuracy_vs_time(ckpt / "accuracy_vs_time.png", [p["train_seconds"] for p in curve],
                                           [p["accuracy"] for p in curve], manifest.model["arch"]))
    report["plots"] = [p.name for p in plots]
    examples = _write_examples(ckpt, images, labels, classes)
    return write_report(ckpt, manifest, report, {k: report[k] for k in CLASS_METRICS}, examples)


def _eval_model(manifest: CheckpointManifest, weights: dict[str, torch.Tensor]) -> nn.Module:
    """The model with `weights`, predicting with the views the checkpoint's preprocessing names."""
    model = build_model(manifest.model).to(memory_format=torch.channels_last)
    model.load_state_dict(weights)
    return view_averaged(model.eval(), manifest.preprocessing)


def _timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _test_accuracy_per_epoch(ckpt: Path, manifest: CheckpointManifest, images: np.ndarray, labels: np.ndarray,
                             scored_in: str) -> list[dict[str, float]]:
    """Each epoch's saved weights on the test images, beside the training time spent by the end of that epoch.
    Scored in `scored_in`, the precision the model trained in (bf16 on the CPU is 2-3x faster, and there is a
    model per epoch), where the report's accuracy is fp32, as the exported model answers."""
    from safetensors.torch import load_file

    from training.checkpoint import verify_file

    pre, history = manifest.preprocessing, manifest.training["history"]
    seconds = np.cumsum([record["epoch_seconds"] for record in history])
    curve = []
    for record, spent in zip(history, seconds, strict=True):
        name = f"{EPOCHS_DIR}/epoch-{record['epoch']}.safetensors"
        if name not in manifest.files:
            continue
        model = _eval_model(manifest, load_file(str(verify_file(ckpt, manifest, name))))
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=scored_in == "bf16"):
            logits = predict_logits(model, images, pre["mean"], pre["std"])
        curve.append({"epoch": record["epoch"], "train_seconds": round(float(spent), 1),
                      "accuracy": float((logits.argmax(1) == labels).mean())})
    return curve


def _write_examples(ckpt: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> list[str]:
    """One test image per class as PNG (what the app offers to try), named by its class."""
    from PIL import Image

    (ckpt / EXAMPLES_DIR).mkdir(exist_ok=True)
    names = []
    for index, name in enumerate(classes):
        rows = np.flatnonzero(labels == index)
        if rows.size:
            path = ckpt / EXAMPLES_DIR / f"{name}.png"
            Image.fromarray(images[rows[0]]).save(path)
            names.append(f"{EXAMPLES_DIR}/{name}.png")
    return names


# --- hyperparameter search (modelyard tune image) -----------------------------------------------------------------

def tune_space(trial) -> tuple[dict[str, Any], dict[str, Any]]:
    """Optimizer, its learning rate and weight decay (ranges of their own), batch size, augmentation strength."""
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adamw"])
    if optimizer == "sgd":
        lr = trial.suggest_float("sgd_lr", 0.02, 0.5, log=True)
        decay = trial.suggest_float("sgd_weight_decay", 1e-5, 2e-3, log=True)
    else:
        lr = trial.suggest_float("adamw_lr", 3e-4, 1e-2, log=True)
        decay = trial.suggest_float("adamw_weight_decay", 1e-3, 0.3, log=True)
    engine = {"optimizer": optimizer, "lr": lr, "weight_decay": decay,
              "batch_size": trial.suggest_categorical("batch_size", [128, 256, 512])}
    return engine, {"augment_strength": trial.suggest_float("augment_strength", 0.5, 1.5)}


# --- generated data -----------------------------------------------------------------------------------------------

def synthesize(out: Path, seed: int = 0) -> list[Path]:
    from training.data.cifar10 import synthesize_cifar

    return synthesize_cifar(out, seed=seed)
