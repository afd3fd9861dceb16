"""Training throughput per backend/strategy at 1 and 2 processes, printed as a table: turbofan in samples/s, the
GPT-2 generator in tokens/s beside a plain PyTorch loop over the same model.

Runs `modelyard train` as a user would and reads the rate (training-loop time only: no validation, no saving) from
the checkpoint manifest. On a GPU machine pass --device cuda to add the GPU-only strategies.

    python bench/train_throughput.py [--task turbofan|generator] [--steps 60] [--nproc 1 2] [--device cpu|cuda]
        [--precision fp32|bf16|fp16] [--data-dir DIR] [--size tiny|small|gpt2] [--block-size 128] [--compile]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.checkpoint import read_manifest  # noqa: E402


@dataclass(frozen=True)
class Case:
    backend: str
    strategy: str
    extra: list[str] = field(default_factory=list)
    nproc: tuple[int, ...] | None = None  # the process counts it runs at (None: any)
    gpu_only: bool = False

    @property
    def label(self) -> str:
        return " ".join([self.strategy, *self.extra])


TURBOFAN = [Case("torch", "ddp"), Case("torch", "fsdp"), Case("colossalai", "ddp"), Case("colossalai", "zero1"),
            Case("colossalai", "zero2"), Case("colossalai", "zero2", ["--offload"]), Case("fairscale", "oss"),
            Case("fairscale", "pipe", nproc=(1,)), Case("colossalai", "gemini", gpu_only=True),
            Case("colossalai", "fsdp", gpu_only=True), Case("fairscale", "fsdp", gpu_only=True)]
GENERATOR = [Case("torch", "ddp"), Case("torch", "fsdp"), Case("colossalai", "zero2"),
             Case("colossalai", "hybrid", ["--tp", "2"], nproc=(2,)),
             Case("colossalai", "hybrid", ["--pp", "2"], nproc=(2,)), Case("fairscale", "oss"),
             Case("fairscale", "pipe", nproc=(1,)), Case("fairscale", "tp", ["--tp", "2"], nproc=(2,)),
             Case("colossalai", "gemini", gpu_only=True), Case("fairscale", "fsdp", gpu_only=True)]


def task_args(args) -> tuple[list[str], str]:
    """The task's own options and the manifest field holding its rate."""
    data = ["--data-dir", args.data_dir] if args.data_dir else ["--synthetic"]
    if args.task == "turbofan":
        return [*data, "--batch-size", str(args.batch_size or 256)], "samples_per_second"
    return [*data, "--size", args.size, "--block-size", str(args.block_size),
            "--batch-size", str(args.batch_size or 8)], "tokens_per_second"


def run(case: Case, nproc: int, args, work: Path) -> tuple[float | None, str]:
    out = work / f"{case.backend}-{case.label.replace(' ', '')}-{nproc}"
    options, rate = task_args(args)
    precision = "fp32" if case.strategy == "pipe" else args.precision  # Pipe's worker threads miss autocast
    command = [sys.executable, "-m", "apps.cli", "train", args.task, "--out", str(out), "--backend", case.backend,
               "--strategy", case.strategy, *case.extra, "--nproc", str(nproc), "--max-steps", str(args.steps),
               "--device", args.device, "--precision", precision, "--no-evaluate", *options]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        return None, (result.stderr.strip().splitlines() or ["failed"])[-1][:80]
    return read_manifest(out).training[rate], ""


def plain_loop(args) -> float:
    """Tokens/s of a bare PyTorch training loop (AdamW, autocast, random tokens) on the same GPT-2 and batch: what
    the engine's loop is measured against."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from training.engine.backends.base import PRECISION_DTYPES
    from training.models.causal_lm import CONFIGS

    layers, heads, width, context = CONFIGS[args.size]
    config = GPT2Config(vocab_size=50257, n_layer=layers, n_head=heads, n_embd=width, n_positions=context)
    device = torch.device(args.device)
    model = GPT2LMHeadModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step = torch.compile(model) if args.compile else model
    batch = args.batch_size or 8
    dtype = PRECISION_DTYPES[args.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    ids = torch.randint(0, config.vocab_size, (args.steps + 3, batch, args.block_size), device=device)
    start = 0.0
    for i in range(args.steps + 3):
        if i == 3:  # after warm-up (and compilation)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = step(input_ids=ids[i], labels=ids[i]).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * batch * args.block_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["turbofan", "generator"], default="turbofan")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=None, help="per process (turbofan 256, generator 8)")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--data-dir", default=None, help="the task's data folder (generated data when omitted)")
    parser.add_argument("--size", default="small", help="generator: GPT-2 size built from scratch (gpt2: 124M)")
    parser.add_argument("--block-size", type=int, default=128, help="generator: tokens per sequence")
    parser.add_argument("--compile", action="store_true", help="generator: torch.compile the plain loop's model")
    args = parser.parse_args()
    generator = args.task == "generator"
    cases = [c for c in (GENERATOR if generator else TURBOFAN) if args.device == "cuda" or not c.gpu_only]
    unit = "tokens/s" if generator else "samples/s"
    shape = f"GPT-2 {args.size}, block {args.block_size}, " if generator else ""
    table = Table(title=f"{args.task} training throughput ({args.device}, {args.precision}, {shape}"
                        f"batch {args.batch_size or (8 if generator else 256)}/process, {args.steps} steps)")
    table.add_column("backend")
    table.add_column("strategy")
    for n in args.nproc:
        table.add_column(f"{n} proc {unit}", justify="right")
    table.add_column("note")
    log = Console(stderr=True)
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            cells, notes = [], []
            for n in args.nproc:
                if case.nproc is not None and n not in case.nproc:
                    cells.append("")
                    continue
                start = time.time()
                rate, note = run(case, n, args, Path(tmp))
                cells.append(f"{rate:,.0f}" if rate else "-")
                if note:
                    notes.append(note)
                log.print(f"{case.backend}/{case.label} x{n}: {cells[-1]} ({time.time() - start:.0f}s)")
            table.add_row(case.backend, case.label, *cells, "; ".join(notes))
    if generator:
        rate = plain_loop(args)
        table.add_row("plain PyTorch loop", "torch.compile" if args.compile else "eager", f"{rate:,.0f}",
                      *[""] * (len(args.nproc) - 1), "one process, no engine")
    Console().print(table)


if __name__ == "__main__":
    main()
