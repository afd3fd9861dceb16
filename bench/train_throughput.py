"""Training throughput of the turbofan recipe per backend/strategy at 1 and 2 processes, printed as a table.

Runs `modelyard train` as a user would and reads samples/s (training-loop time only: no validation, no saving) from
the checkpoint manifest. On a GPU machine pass --device cuda to add the GPU-only strategies.

    python bench/train_throughput.py [--steps 60] [--nproc 1 2] [--device cpu|cuda] [--data-dir DIR]
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

from training.checkpoint import read_manifest  # noqa: E402

CPU = [("torch", "ddp", []), ("torch", "fsdp", []), ("colossalai", "ddp", []), ("colossalai", "zero1", []),
       ("colossalai", "zero2", []), ("colossalai", "zero2", ["--offload"]), ("fairscale", "oss", []),
       ("fairscale", "pipe", [])]
GPU_ONLY = [("colossalai", "gemini", []), ("colossalai", "fsdp", []), ("fairscale", "fsdp", [])]


def run(backend: str, strategy: str, extra: list[str], nproc: int, args, work: Path) -> tuple[float | None, str]:
    out = work / f"{backend}-{strategy}{'-'.join(extra)}-{nproc}"
    command = [sys.executable, "-m", "apps.cli", "train", "turbofan", "--out", str(out), "--backend", backend,
               "--strategy", strategy, *extra, "--nproc", str(nproc), "--max-steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--device", args.device, "--precision", args.precision,
               "--no-evaluate", *(["--data-dir", args.data_dir] if args.data_dir else ["--synthetic"])]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        return None, (result.stderr.strip().splitlines() or ["failed"])[-1][:80]
    return read_manifest(out).training["samples_per_second"], ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=256, help="per process")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--data-dir", default=None, help="C-MAPSS folder (generated data when omitted)")
    args = parser.parse_args()
    cases = CPU + (GPU_ONLY if args.device == "cuda" else [])
    table = Table(title=f"turbofan training throughput ({args.device}, {args.precision}, "
                        f"batch {args.batch_size}/process, {args.steps} steps)")
    table.add_column("backend")
    table.add_column("strategy")
    for n in args.nproc:
        table.add_column(f"{n} proc samples/s", justify="right")
    table.add_column("note")
    with tempfile.TemporaryDirectory() as tmp:
        for backend, strategy, extra in cases:
            cells, notes = [], []
            for n in args.nproc:
                start = time.time()
                rate, note = run(backend, strategy, extra, n, args, Path(tmp))
                cells.append(f"{rate:,.0f}" if rate else "-")
                if note:
                    notes.append(note)
                Console(stderr=True).print(f"{backend}/{strategy}{' '.join(extra)} x{n}: {cells[-1]} "
                                           f"({time.time() - start:.0f}s)")
            table.add_row(backend, strategy + (" +offload" if extra else ""), *cells, "; ".join(notes))
    Console().print(table)


if __name__ == "__main__":
    main()
