"""Soak: the demo's streaming part and its APIs run for --minutes under a light steady load; every --every seconds
the bench samples what must stay flat for a demo left running for days.

Started as a user would, each its own process: `modelyard stream broker` (embedded noida-db), `stream replay --loop`
at --rate messages/s, `stream monitor` with its /metrics, and `modelyard serve TASK` for turbofan and every other task
with a checkpoint under --demo (one request a second each). Sampled: resident memory of each process (with its
children: BentoML's workers, the broker), the broker's data on disk, the monitor's number of metric series, the
monitor's event-to-alert p99 and messages scored, each API's p99 latency and errors in the interval. Prints a table
and each quantity's slope per hour (least squares over the samples after --warmup minutes), and writes soak.png and
soak.json into --out.

    python bench/soak.py --minutes 60 --rate 1000 [--demo runs/demo] [--every 60] [--out runs/bench/soak]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.stream_monitor import checkpoint  # noqa: E402
from serving.server import wait_ready  # noqa: E402
from streaming.broker import wait_for_broker  # noqa: E402
from tests.conftest import free_port  # noqa: E402

console = Console(width=200)


def request_for(task: str, ckpt: Path) -> tuple[str, dict]:
    """(route, httpx keyword arguments) of one small request the task's API answers."""
    if task == "turbofan":
        return "/score", {"json": {"cycles": [[0.0, 0.0, 100.0, *([500.0] * 21)]] * 30}}
    if task == "news":
        return "/classify", {"json": {"texts": ["Stocks rallied as the central bank held rates steady."]}}
    if task == "generator":
        return "/v1/completions", {"json": {"model": "generator", "prompt": "The river", "max_tokens": 8}}
    if task == "sales":
        series = (ckpt / "series.csv").read_text().splitlines()[1].split(",")[0]
        return "/forecast", {"json": {"series_id": series, "horizon": 28}}
    if task == "image":
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (120, 80, 40)).save(buffer, "PNG")
        return "/classify", {"json": {"images": [base64.b64encode(buffer.getvalue()).decode()]}}
    raise ValueError(task)


class Load(threading.Thread):
    """One request a second to an API; latencies and errors since the last take()."""

    def __init__(self, url: str, kwargs: dict, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.kwargs, self.stop = url, kwargs, stop
        self.latencies: list[float] = []
        self.errors = 0

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=30) as client:
            while not self.stop.wait(1.0):
                start = time.perf_counter()
                try:
                    ok = client.post(self.url, **self.kwargs).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - start)
                self.errors += not ok

    def take(self) -> tuple[float, int]:
        latencies, errors = self.latencies, self.errors
        self.latencies, self.errors = [], 0
        return (float(np.percentile(latencies, 99) * 1000) if latencies else float("nan")), errors


def rss_mb(process: subprocess.Popen) -> float:
    try:
        tree = psutil.Process(process.pid)
        return sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)]) / 2**20
    except psutil.NoSuchProcess:
        return float("nan")


def monitor_metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        lines = [line for line in response.read().decode().splitlines() if line and not line.startswith("#")]
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}
    def p99_ms(name: str) -> float:
        return 1000 * values.get(f'modelyard_monitor_{name}_seconds{{quantile="0.99"}}', float("nan"))

    lag = sum(v for k, v in values.items() if k.startswith("modelyard_monitor_consumer_lag"))
    return {"metric series": len(lines), "engines monitored": values.get("modelyard_monitor_engines", float("nan")),
            "messages scored": values.get("modelyard_monitor_messages_total", float("nan")),
            "event->scored p99 ms": p99_ms("event_to_scored"), "event->alert p99 ms": p99_ms("event_to_alert"),
            "consumer lag": lag}


def start(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "apps.cli", *command], cwd=REPO, stdout=open(log, "w"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)


def slope_per_hour(minutes: list[float], values: list[float], warmup: float) -> float:
    x, y = np.asarray(minutes) / 60, np.asarray(values, dtype=float)
    keep = np.isfinite(y) & (x * 60 >= warmup)
    return float(np.polyfit(x[keep], y[keep], 1)[0]) if keep.sum() >= 2 else float("nan")


def plot(samples: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    keys = [k for k in samples[0] if k != "minute"]
    fig, axes = plt.subplots((len(keys) + 2) // 3, 3, figsize=(13, 2.6 * ((len(keys) + 2) // 3)), squeeze=False)
    minutes = [s["minute"] for s in samples]
    for ax, key in zip(axes.flat, keys, strict=False):
        ax.plot(minutes, [s[key] for s in samples], marker=".")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("minute")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--rate", type=float, default=1000.0, help="replay messages per second")
    parser.add_argument("--demo", type=Path, default=REPO / "runs" / "demo", help="the demo's checkpoints")
    parser.add_argument("--apis", default="turbofan,news,image,sales,generator",
                        help="the APIs served beside the stream (comma-separated; 'none': the stream alone)")
    parser.add_argument("--keep-records", type=int, help="the broker's retention (default: the broker's)")
    parser.add_argument("--warmup", type=float, default=6.0,
                        help="minutes left out of the slopes (the monitor's fleet grows until it forgets, 5 min)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "soak")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    turbofan, data = checkpoint(args.demo / "turbofan-monitor", work)
    apis = {"turbofan": turbofan, **{task: args.demo / task for task in ("news", "image", "sales", "generator")
                                     if (args.demo / task / "manifest.json").is_file()}}
    apis = {task: ckpt for task, ckpt in apis.items() if task in args.apis.split(",")}
    kafka, metrics = free_port(), free_port()
    bootstrap, metrics_url = f"127.0.0.1:{kafka}", f"http://127.0.0.1:{metrics}/metrics"
    broker_dir = work / "broker"
    keep = ["--keep-records", str(args.keep_records)] if args.keep_records else []
    processes = {"broker": start(["stream", "broker", "--port", str(kafka), "--data-dir", str(broker_dir), *keep],
                                 work / "broker.log")}
    stop, loads = threading.Event(), {}
    try:
        wait_for_broker(bootstrap, timeout=60)
        time.sleep(2)  # the broker command creates the topics after it answers
        processes["replay"] = start(["stream", "replay", "--data-dir", str(data), "--bootstrap-servers", bootstrap,
                                     "--rate", str(args.rate), "--loop"], work / "replay.log")
        processes["monitor"] = start(["stream", "monitor", "--checkpoint", str(turbofan), "--bootstrap-servers",
                                      bootstrap, "--metrics-port", str(metrics)], work / "monitor.log")
        for task, ckpt in apis.items():
            port = free_port()
            runtime = "onnx" if "model.onnx" in json.loads((ckpt / "manifest.json").read_text())["files"] else "torch"
            processes[task] = start(["serve", task, "--checkpoint", str(ckpt), "--port", str(port), "--runtime",
                                     runtime], work / f"{task}.log")
            wait_ready(f"http://127.0.0.1:{port}", processes[task], timeout=600, log=work / f"{task}.log")
            route, kwargs = request_for(task, ckpt)
            loads[task] = Load(f"http://127.0.0.1:{port}{route}", kwargs, stop)
            loads[task].start()
        console.print(f"soaking {', '.join(processes)} for {args.minutes:g} min (work folder {work})")
        samples, began = [], time.monotonic()
        while time.monotonic() - began < args.minutes * 60 + 1:
            time.sleep(max(0.0, args.every - (time.monotonic() - began) % args.every))
            for name, process in processes.items():
                if process.poll() is not None:
                    raise SystemExit(f"{name} exited with code {process.returncode}; see {work / name}.log")
            sample = {"minute": round((time.monotonic() - began) / 60, 2)}
            sample.update({f"{name} RSS MB": round(rss_mb(p), 1) for name, p in processes.items()})
            sample["broker disk MB"] = round(sum(f.stat().st_size for f in broker_dir.rglob("*") if f.is_file())
                                             / 2**20, 1)
            sample.update(monitor_metrics(metrics_url))
            for task, load in loads.items():
                sample[f"{task} p99 ms"], sample[f"{task} errors"] = load.take()
            samples.append(sample)
            console.print(sample)
    finally:
        stop.set()
        for process in reversed(processes.values()):  # the broker last: its clients leave their groups first
            if process.poll() is None:
                os.killpg(process.pid, 15)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, 9)
                    process.wait()
    report(samples, args)


def report(samples: list[dict], args: argparse.Namespace) -> None:
    minutes = [s["minute"] for s in samples]
    table = Table(title=f"soak: {args.minutes:g} min, replay at {args.rate:g} messages/s, a sample every "
                        f"{args.every:g} s (slope: least squares over the samples from minute {args.warmup:g})")
    shown = samples[:-1:max(1, len(samples) // 5)] + samples[-1:]
    table.add_column("quantity")
    for s in shown:
        table.add_column(f"min {s['minute']:g}", justify="right")
    table.add_column("slope / hour", justify="right")
    for key in (k for k in samples[0] if k != "minute"):
        slope = slope_per_hour(minutes, [s[key] for s in samples], args.warmup)
        table.add_row(key, *(f"{s[key]:,.1f}" for s in shown), f"{slope:+,.1f}")
    console.print(table)
    (args.out / "soak.json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                    "samples": samples}, indent=1))
    plot(samples, args.out / "soak.png")
    console.print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")


if __name__ == "__main__":
    main()
