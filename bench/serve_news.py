"""Latency and throughput of the news API over HTTP, per runtime (ONNX Runtime, torch) and client concurrency.

Starts `bentoml serve` for a news checkpoint, then keeps CONCURRENCY requests in flight (one 64-token text each) for
a fixed time with an asyncio HTTP client, and prints p50/p95/p99 latency and requests/s. Targets on a 2-core CPU:
p50 <= 15 ms at concurrency 1 (ONNX), and adaptive batching giving >= 3x the requests/s at concurrency 32.

First it times the predictor alone (tokenizer + model, no HTTP) on batches of 1 and 32 texts: the batch-32 cost
per text bounds what any server can reach, so the HTTP table's "ceiling x" column is that bound divided by the
measured concurrency-1 rate (batching cannot beat it, however the server is built).

    python bench/serve_news.py [--checkpoint runs/demo/news] [--seconds 10] [--concurrency 1 8 32]

Without --checkpoint (or when it does not exist) it makes an untrained MiniLM checkpoint first: latency does not
depend on the weights' values.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serving.server import start_server, stop_server, wait_ready  # noqa: E402
from training.checkpoint import load_tokenizer, read_manifest  # noqa: E402

TOKENS = 64


def ensure_checkpoint(path: Path | None, work: Path) -> Path:
    if path and (path / "manifest.json").is_file():
        if "model.onnx" not in read_manifest(path).files:
            subprocess.run([sys.executable, "-m", "apps.cli", "export", str(path)], cwd=REPO, check=True)
        return path
    out = work / "news"
    print("making an untrained MiniLM news checkpoint (1 step on generated data) ...", flush=True)
    subprocess.run([sys.executable, "-m", "apps.cli", "train", "news", "--out", str(out), "--synthetic",
                    "--max-steps", "1", "--no-evaluate"], cwd=REPO, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "apps.cli", "export", str(out)], cwd=REPO, check=True, capture_output=True)
    return out


def text_of_tokens(ckpt: Path, tokens: int) -> str:
    """A news-like text that the checkpoint's tokenizer turns into exactly `tokens` ids ([CLS] ... [SEP])."""
    manifest = read_manifest(ckpt)
    tokenizer = load_tokenizer(ckpt, manifest, manifest.preprocessing["tokenizer_dir"])
    words = ("Shares of the largest chip maker rose sharply on Tuesday after the company reported quarterly "
             "earnings that beat analyst forecasts and raised its outlook for the rest of the year as demand "
             "for data centre processors kept growing across markets in Asia Europe and America").split()
    text = ""
    for i in range(1000):
        candidate = (text + " " + words[i % len(words)]).strip()
        if len(tokenizer(candidate)["input_ids"]) > tokens:
            break
        text = candidate
    return text


def predictor_alone(ckpt: Path, runtime: str, text: str, texts: int = 320) -> dict[int, float]:
    """Milliseconds per text of NewsPredictor.predict (tokenizer and model, in this process) at batch 1 and 32."""
    from serving.predictor import NewsPredictor

    predictor = NewsPredictor(ckpt, runtime)
    per_text = {}
    for batch in (1, 32):
        for _ in range(2):
            predictor.predict([text] * batch)  # warm-up: first calls allocate
        calls = max(3, texts // batch)
        start = time.perf_counter()
        for _ in range(calls):
            predictor.predict([text] * batch)
        per_text[batch] = (time.perf_counter() - start) * 1000 / (calls * batch)
    return per_text


async def load(url: str, text: str, concurrency: int, seconds: float) -> tuple[list[float], float, int]:
    """Latencies of the answered requests, answered requests/s, and how many the server shed with 503 (BentoML's
    batcher refuses work that could not finish within the endpoint's max_latency_ms)."""
    latencies: list[float] = []
    shed = 0
    body = {"texts": [text]}
    stop_at = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal shed
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            async with session.post(f"{url}/classify", json=body) as response:
                await response.read()
                if response.status == 503:
                    shed += 1
                    continue
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(3):  # warm up the connection pool and the model
            async with session.post(f"{url}/classify", json=body) as response:
                await response.read()
        begin = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - begin
    return latencies, len(latencies) / elapsed, shed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "runs" / "demo" / "news")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--runtimes", nargs="+", default=["onnx", "torch"])
    parser.add_argument("--port", type=int, default=3155)
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 140)  # piped output: no wrapped columns
    with tempfile.TemporaryDirectory() as work:
        ckpt = ensure_checkpoint(args.checkpoint, Path(work))
        text = text_of_tokens(ckpt, TOKENS)
        alone = Table(title=f"news predictor alone (tokenizer + model, no HTTP), one {TOKENS}-token text repeated")
        for column in ("runtime", "ms/text batch 1", "ms/text batch 32", "texts/s batch 32", "batch 32 vs 1"):
            alone.add_column(column, justify="right")
        ceiling = {}
        for runtime in args.runtimes:
            per_text = predictor_alone(ckpt, runtime, text)
            ceiling[runtime] = 1000 / per_text[32]
            alone.add_row(runtime, f"{per_text[1]:.1f}", f"{per_text[32]:.1f}", f"{ceiling[runtime]:.1f}",
                          f"{per_text[1] / per_text[32]:.2f}x")
        console.print(alone)
        table = Table(title=f"news API over HTTP, one {TOKENS}-token text per request, {args.seconds:.0f} s per row")
        for column in ("runtime", "concurrency", "answered", "shed (503)", "p50 ms", "p95 ms", "p99 ms",
                       "requests/s", "x concurrency 1", "ceiling x"):
            table.add_column(column, justify="right")
        for runtime in args.runtimes:
            log = Path(work) / f"serve-{runtime}.log"
            url = f"http://127.0.0.1:{args.port}"
            server = start_server("news", ckpt, args.port, runtime, log=log)
            try:
                wait_ready(url, server, log=log)
                base = None
                for concurrency in args.concurrency:
                    latencies, rate, shed = asyncio.run(load(url, text, concurrency, args.seconds))
                    p50, p95, p99 = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
                    base = base or rate
                    table.add_row(runtime, str(concurrency), str(len(latencies)), str(shed), f"{p50:.1f}",
                                  f"{p95:.1f}", f"{p99:.1f}", f"{rate:.1f}", f"{rate / base:.2f}",
                                  f"{ceiling[runtime] / base:.2f}")
                    console.print(f"{runtime} c={concurrency}: p50 {p50:.1f} ms, {rate:.1f} req/s, {shed} shed")
            finally:
                stop_server(server)
        console.print(alone)
        console.print(table)
        console.print(f"checkpoint: {ckpt}")


if __name__ == "__main__":
    main()
