"""Throughput and latency of one turbofan monitor process on the embedded Kafka-protocol broker.

0. Model only: windows/s of the checkpoint's ONNX Runtime session on full polls (2,000 windows), the ceiling for
   the rows below (the monitor cannot score faster than its model).
1. Sustained rate: N sensor messages are in the topic before the monitor starts; messages/s is N over the time one
   monitor takes to score them all (parse, window, ONNX Runtime, alert state, commit).
2. Latency at a fixed rate: the replay publishes at --rate messages/s while the monitor runs; p50/p99 from a
   message's event time to the end of its scoring (every message), and to its alert being produced (alerts only).
Targets on a 2-core CPU: >= 5,000 messages/s; p99 <= 250 ms at 1,000 messages/s.

    python bench/stream_monitor.py [--checkpoint runs/demo/turbofan-monitor] [--messages 50000] [--rate 1000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streaming.broker import EmbeddedBroker, ensure_topics  # noqa: E402
from streaming.monitor import MonitorSettings, TurbofanMonitor  # noqa: E402
from streaming.replay import fleet_order, load_replay, replay  # noqa: E402
from training.checkpoint import read_manifest  # noqa: E402


def checkpoint(path: Path, work: Path) -> tuple[Path, Path]:
    """(checkpoint, its C-MAPSS folder); when `path` has none, trains one shaped like the demo's monitor model (a
    single LSTM: the cost per window depends on the shape, not on the weights) on generated data."""
    if not (path / "manifest.json").is_file():
        path, data = work / "turbofan", work / "data"
        subprocess.run([sys.executable, "-m", "apps.cli", "data", "synth", "turbofan", "--out", str(data)],
                       cwd=REPO, check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "apps.cli", "train", "turbofan", "--out", str(path), "--data-dir",
                        str(data), "--epochs", "2", "--members", "1", "--no-evaluate"], cwd=REPO, check=True,
                       capture_output=True)
    if "model.onnx" not in read_manifest(path).files:
        subprocess.run([sys.executable, "-m", "apps.cli", "export", str(path)], cwd=REPO, check=True,
                       capture_output=True)
    return path, Path(read_manifest(path).training["data_dir"])


def model_ceiling(ckpt: Path, batch: int = 2000, seconds: float = 3.0) -> float:
    """Windows per second of the checkpoint's model alone, in the batches a busy monitor scores per poll."""
    from serving.predictor import TurbofanPredictor

    predictor = TurbofanPredictor(ckpt)
    windows = np.random.default_rng(0).normal(size=(batch, predictor.window, predictor.normalizer.n_features))
    predictor.score(windows)  # warm-up
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predictor.score(windows)
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def fleet(data_dir: Path, subset: str, messages: int):
    """At least `messages` rows: the test engines, repeated as new fleets (engine ids + 1000 per copy)."""
    import pandas as pd

    base = load_replay(data_dir, subset, "test")
    copies = []
    for k in range(int(np.ceil(messages / len(base)))):
        copy = base.copy()
        copy["unit"] += 1000 * k
        copies.append(copy)
    return fleet_order(pd.concat(copies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "runs" / "demo" / "turbofan-monitor")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the fixed-rate run")
    args = parser.parse_args()
    console = Console()
    table = Table(title="turbofan monitor, one process, embedded broker")
    for column in ("run", "messages", "seconds", "messages/s", "p50 ms", "p99 ms", "alerts"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as work:
        ckpt, data_dir = checkpoint(args.checkpoint, Path(work))
        subset = read_manifest(ckpt).training["subset"]
        ceiling = model_ceiling(ckpt)
        table.add_row("model alone (ONNX)", "-", "-", f"{ceiling:.0f}", "-", "-", "-")
        with EmbeddedBroker(Path(work) / "broker", 19393) as broker:
            ensure_topics(broker.bootstrap_servers)
            rows = fleet(data_dir, subset, args.messages).iloc[:args.messages]
            replay(broker.bootstrap_servers, rows, progress=False)
            monitor = TurbofanMonitor(MonitorSettings(broker.bootstrap_servers, ckpt, group="bench-sustained"))
            start = time.perf_counter()
            monitor.run(max_idle_s=2.0)
            seconds = time.perf_counter() - start - 2.0
            table.add_row("sustained (backlog)", str(monitor.stats.messages), f"{seconds:.1f}",
                          f"{monitor.stats.messages / seconds:.0f}", "-", "-", str(monitor.stats.alerts))
            console.print(f"sustained: {monitor.stats.messages / seconds:.0f} messages/s")

        with EmbeddedBroker(Path(work) / "broker2", 19394) as broker:
            ensure_topics(broker.bootstrap_servers)
            rows = fleet(data_dir, subset, int(args.rate * args.seconds)).iloc[:int(args.rate * args.seconds)]
            monitor = TurbofanMonitor(MonitorSettings(broker.bootstrap_servers, ckpt, group="bench-latency"))
            thread = threading.Thread(target=monitor.run, kwargs={"max_idle_s": 3.0})
            thread.start()
            time.sleep(3.0)  # joined the group
            result = replay(broker.bootstrap_servers, rows, rate=args.rate, progress=False)
            thread.join()
            scored = monitor.stats.scored_latencies.values() * 1000
            alerted = monitor.stats.latencies.values() * 1000
            table.add_row(f"event -> scored at {args.rate:.0f}/s", str(len(scored)), f"{result.seconds:.1f}",
                          f"{result.messages / result.seconds:.0f}", f"{np.percentile(scored, 50):.1f}",
                          f"{np.percentile(scored, 99):.1f}", "-")
            if len(alerted):
                table.add_row(f"event -> alert at {args.rate:.0f}/s", str(len(alerted)), "-", "-",
                              f"{np.percentile(alerted, 50):.1f}", f"{np.percentile(alerted, 99):.1f}",
                              str(monitor.stats.alerts))
    console.print(table)
    console.print(f"checkpoint: {ckpt}")


if __name__ == "__main__":
    main()
