"""Image training time to a test accuracy: trains `modelyard train image` with the options given (the default
recipe when none), evaluates it, and prints each epoch's test accuracy against the training time spent by its end,
then the first time each target was reached (anchor: airbench94 reaches 94.0% in 2.59 s on an A100).

The time is the manifest's per-epoch time (training loop and its per-epoch validation), the accuracy the report's
per-epoch test accuracy with the recipe's test-time views. Everything after `--` goes to `modelyard train image`.

    python bench/image_time_to_accuracy.py [--targets 0.90 0.93 0.94] [--out DIR] -- --data-dir DIR [--device cuda]
        [--width 64] [--epochs 26] ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]


def first_reaching(curve: list[dict[str, float]], target: float) -> dict[str, float] | None:
    return next((point for point in curve if point["accuracy"] >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.93, 0.94])
    parser.add_argument("--out", default=str(REPO / "runs" / "bench" / "image-time-to-accuracy"),
                        help="the checkpoint, its report and plots (accuracy_vs_time.png)")
    parser.add_argument("train_options", nargs=argparse.REMAINDER, help="after --: options of modelyard train image")
    args = parser.parse_args()
    options = [o for o in args.train_options if o != "--"]
    out = Path(args.out)
    command = [sys.executable, "-m", "apps.cli", "train", "image", "--out", str(out), *options]
    if subprocess.run(command, cwd=REPO).returncode != 0:
        sys.exit("training failed (its output is above)")
    report = json.loads((out / "report.json").read_text())
    curve = report.get("test_accuracy_per_epoch")
    if not curve:
        sys.exit("the report has no per-epoch test accuracy (did the run evaluate, with per-epoch snapshots?)")
    console = Console()
    epochs = Table(title=f"test accuracy per epoch ({' '.join(options) or 'default recipe'})")
    for column in ("epoch", "train seconds", "test accuracy"):
        epochs.add_column(column, justify="right")
    for point in curve:
        epochs.add_row(str(point["epoch"]), f"{point['train_seconds']:,.1f}", f"{point['accuracy']:.4f}")
    console.print(epochs)
    targets = Table(title=f"time to accuracy (final test accuracy {report['accuracy']:.4f}, fp32)")
    for column in ("target", "epoch", "train seconds"):
        targets.add_column(column, justify="right")
    for target in args.targets:
        point = first_reaching(curve, target)
        targets.add_row(f"{target:.2%}", str(point["epoch"]) if point else "not reached",
                        f"{point['train_seconds']:,.1f}" if point else "-")
    console.print(targets)


if __name__ == "__main__":
    main()
