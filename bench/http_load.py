"""Closed-loop HTTP load for the API benches: CONCURRENCY requests kept in flight for a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp

# One request: (session) -> its HTTP status, the body read.
Request = Callable[[aiohttp.ClientSession], Awaitable[int]]


async def load(request: Request, concurrency: int, seconds: float) -> tuple[list[float], float, int]:
    """Latencies of the answered requests, answered requests/s, and how many the server shed with 503 (a batcher
    refusing work that could not finish in time)."""
    latencies: list[float] = []
    shed = 0
    stop_at = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal shed
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            status = await request(session)
            if status == 503:
                shed += 1
                continue
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(3):  # warm up the connection pool and the model
            await request(session)
        begin = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - begin
    return latencies, len(latencies) / elapsed, shed


def json_post(url: str, body: object) -> Request:
    async def send(session: aiohttp.ClientSession) -> int:
        async with session.post(url, json=body) as response:
            await response.read()
            return response.status
    return send


def http_table(task: str, ckpt, runtimes: list[str], concurrency: list[int], seconds: float, port: int,
               request_for: Callable[[str], Request], ceiling: dict[str, float], title: str, work, console):
    """One `bentoml serve` per runtime, loaded at each concurrency: a rich Table of latency and requests/s, with
    each rate against concurrency 1 and against the batch ceiling (requests/s a perfect batcher could reach)."""
    from pathlib import Path

    import numpy as np
    from rich.table import Table

    from serving.server import start_server, stop_server, wait_ready

    table = Table(title=title)
    for column in ("runtime", "concurrency", "answered", "shed (503)", "p50 ms", "p95 ms", "p99 ms", "requests/s",
                   "x concurrency 1", "ceiling x"):
        table.add_column(column, justify="right")
    for runtime in runtimes:
        log = Path(work) / f"serve-{runtime}.log"
        url = f"http://127.0.0.1:{port}"
        server = start_server(task, ckpt, port, runtime, log=log)
        try:
            wait_ready(url, server, log=log)
            base = None
            for clients in concurrency:
                latencies, rate, shed = asyncio.run(load(request_for(url), clients, seconds))
                p50, p95, p99 = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
                base = base or rate
                table.add_row(runtime, str(clients), str(len(latencies)), str(shed), f"{p50:.1f}", f"{p95:.1f}",
                              f"{p99:.1f}", f"{rate:.1f}", f"{rate / base:.2f}", f"{ceiling[runtime] / base:.2f}")
                console.print(f"{runtime} c={clients}: p50 {p50:.1f} ms, {rate:.1f} req/s, {shed} shed")
        finally:
            stop_server(server)
    return table


def api_bench_arguments(doc: str, task: str, port: int, many: int | None = None):
    """The options every API bench takes (a checkpoint, seconds per row, concurrencies, runtimes, a port), and
    --many (series or items in one request) where the API takes many."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path(__file__).resolve().parents[1] / "runs" / "demo" / task)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--runtimes", nargs="+", default=["onnx", "torch"])
    parser.add_argument("--port", type=int, default=port)
    if many is not None:
        parser.add_argument("--many", type=int, default=many, help="series or items in one request")
    return parser.parse_args()


def ms_per_item(predict: Callable[[list], object], item: object, items: int) -> dict[int, float]:
    """Milliseconds per item of `predict` (in this process, no HTTP) on batches of 1 and 32 copies of `item`."""
    per_item = {}
    for batch in (1, 32):
        for _ in range(2):
            predict([item] * batch)  # warm-up: first calls allocate
        calls = max(3, items // batch)
        start = time.perf_counter()
        for _ in range(calls):
            predict([item] * batch)
        per_item[batch] = (time.perf_counter() - start) * 1000 / (calls * batch)
    return per_item


def alone_table(runtimes: list[str], measure: Callable[[str], dict[int, float]], unit: str, title: str):
    """The predictor alone per runtime (ms per `unit` at batch 1 and 32) as a rich Table, and each runtime's
    batch-32 rate: the ceiling no server can beat with batching."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("runtime", f"ms/{unit} batch 1", f"ms/{unit} batch 32", f"{unit}s/s batch 32", "batch 32 vs 1"):
        table.add_column(column, justify="right")
    ceiling = {}
    for runtime in runtimes:
        per_item = measure(runtime)
        ceiling[runtime] = 1000 / per_item[32]
        table.add_row(runtime, f"{per_item[1]:.2f}", f"{per_item[32]:.2f}", f"{ceiling[runtime]:.1f}",
                      f"{per_item[1] / per_item[32]:.2f}x")
    return table, ceiling


def exported_checkpoint(path, work, task: str, train_args: list[str], what: str):
    """`path` when it is a checkpoint (exported to ONNX first if needed); else a quick one trained in `work` with
    `modelyard train TASK --synthetic TRAIN_ARGS` (latency does not depend on the weights' values)."""
    import subprocess
    import sys
    from pathlib import Path

    from training.checkpoint import read_manifest

    repo = Path(__file__).resolve().parents[1]
    cli = [sys.executable, "-m", "apps.cli"]
    if path and (Path(path) / "manifest.json").is_file():
        if "model.onnx" not in read_manifest(Path(path)).files:
            subprocess.run([*cli, "export", str(path)], cwd=repo, check=True)
        return Path(path)
    out = Path(work) / task
    print(f"making {what} ...", flush=True)
    subprocess.run([*cli, "train", task, "--out", str(out), "--synthetic", *train_args], cwd=repo, check=True,
                   capture_output=True)
    subprocess.run([*cli, "export", str(out)], cwd=repo, check=True, capture_output=True)
    return out
