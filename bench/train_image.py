"""Image training throughput: images/s of `modelyard train image` per backend/strategy at 1 and 2 processes, beside
a plain PyTorch loop with the same model, data path, augmentation and optimizer (the engine's overhead).

Runs the CLI as a user would and reads images/s (training-loop time only) from each checkpoint's manifest; the
plain loop runs here, in this process, with the same thread count as one training process. On a GPU machine pass
--device cuda to add the GPU-only strategies (gemini steps AdamW: its own Adam kernels are all it has).

    python bench/train_image.py [--steps 40] [--nproc 1 2] [--data-dir DIR] [--width 32] [--batch-size 256]
                                [--precision bf16|fp32|fp16] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.train_throughput import Case  # noqa: E402
from training.checkpoint import read_manifest  # noqa: E402

STRATEGIES = [Case("torch", "ddp"), Case("torch", "fsdp"), Case("colossalai", "ddp"), Case("colossalai", "zero1"),
              Case("colossalai", "zero2"), Case("fairscale", "oss"),
              Case("colossalai", "gemini", ["--optimizer", "adamw"], gpu_only=True),
              Case("colossalai", "fsdp", gpu_only=True), Case("fairscale", "fsdp", gpu_only=True)]


def data_args(args) -> list[str]:
    return ["--data-dir", args.data_dir] if args.data_dir else ["--synthetic"]


def engine_rate(case: Case, nproc: int, args, work: Path) -> tuple[float | None, str]:
    out = work / f"{case.backend}-{case.strategy}-{nproc}"
    command = [sys.executable, "-m", "apps.cli", "train", "image", "--out", str(out), "--backend", case.backend,
               "--strategy", case.strategy, *case.extra, "--nproc", str(nproc), "--max-steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--width", str(args.width), "--precision", args.precision,
               "--device", args.device, "--no-evaluate", *data_args(args)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        return None, (result.stderr.strip().splitlines() or ["failed"])[-1][:80]
    return read_manifest(out).training["samples_per_second"], ""


def plain_rate(args, work: Path) -> float:
    """The same step as the engine's, written as the shortest PyTorch loop: no engine, no backend wrapper."""
    import torch

    from training.data.cifar10 import synthesize_cifar
    from training.data.image_augment import Augment
    from training.engine.backends.base import PRECISION_DTYPES
    from training.models import build_model
    from training.models.image import image_model_config
    from training.tasks import image

    data_dir = Path(args.data_dir) if args.data_dir else work / "plain-data"
    if not args.data_dir:
        synthesize_cifar(data_dir, seed=0)
    data = image.load_data(data_dir, seed=0)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(image_model_config("fastnet", 10, args.width)).to(device, memory_format=torch.channels_last)
    loss_fn = image.AugmentedLoss(Augment(("crop", "flip")), data.mean, data.std, 0.2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    dataset = image.ImageBatches(data.cifar.train_images[data.fit_index], data.cifar.train_labels[data.fit_index])
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=image.keep_batch)
    model.train()
    dtype = PRECISION_DTYPES[args.precision]
    low_precision = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    seen, steps, start = 0, 0, time.perf_counter()
    while steps < args.steps:
        for batch in loader:
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            with low_precision:
                loss = loss_fn(model, batch)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            seen, steps = seen + len(batch[0]), steps + 1
            if steps == args.steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=256, help="per process")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precision", choices=("bf16", "fp32", "fp16"), default="bf16",
                        help="the engine runs and the plain loop alike (bf16: autocast, as the recipe trains; "
                             "fp16 with loss scaling, on a GPU)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 folder (generated data when omitted)")
    args = parser.parse_args()
    log = Console(stderr=True)
    table = Table(title=f"image training throughput (FastNet width {args.width}, batch {args.batch_size}/process, "
                        f"{args.device}, {args.precision}, {args.steps} steps, images/s)")
    for column in ("backend", "strategy", *(f"{n} proc" for n in args.nproc), "vs plain loop (1 proc)", "note"):
        table.add_column(column, justify="left" if column in ("backend", "strategy", "note") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        plain = plain_rate(args, Path(tmp))
        log.print(f"plain PyTorch loop: {plain:,.0f} images/s")
        table.add_row("plain PyTorch", "(no engine)", f"{plain:,.0f}", *["-"] * (len(args.nproc) - 1), "1.00", "")
        for case in (c for c in STRATEGIES if args.device == "cuda" or not c.gpu_only):
            cells, notes, single = [], [], None
            for n in args.nproc:
                rate, note = engine_rate(case, n, args, Path(tmp))
                single = rate if n == 1 else single
                cells.append(f"{rate:,.0f}" if rate else "-")
                if note:
                    notes.append(note)
                log.print(f"{case.backend}/{case.label} x{n}: {cells[-1]}")
            ratio = f"{single / plain:.2f}" if single else "-"
            table.add_row(case.backend, case.label, *cells, ratio, "; ".join(notes))
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
