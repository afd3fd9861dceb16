"""Streaming generation over HTTP: time to first token (p50/p99) and decode tokens/s of one stream, then the total
tokens/s with N streams at once, which the continuous batcher decodes together (one forward pass per token for all
of them). Every stream runs to `--tokens` new tokens (greedy; a stop string that never occurs keeps it going).

    python bench/serve_generator.py [--checkpoint runs/demo/generator] [--tokens 64] [--streams 1 8 16] [--rounds 3]

Without --checkpoint (or when it does not exist) it trains a small GPT-2 (4 layers x 256) for a few steps on
generated data first: speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = "= The River Thames =\n\nThe River Thames flows through"


async def one_stream(session, url: str, tokens: int) -> tuple[float, float, int]:
    """(seconds to the first text event, seconds in all, tokens generated) for one streamed generation."""
    body = {"prompt": PROMPT, "max_new_tokens": tokens, "temperature": 0, "stop": ["\u2603"],
            "repetition_penalty": 1.0}
    start = time.perf_counter()
    first, generated, kind = None, 0, None
    async with session.post(f"{url}/generate/stream", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "text" and first is None:
                first = time.perf_counter() - start
            elif line.startswith("data: ") and kind == "done":
                generated = json.loads(line[6:])["generated_tokens"]
    return first or 0.0, time.perf_counter() - start, generated


async def streams_at_once(url: str, count: int, tokens: int, rounds: int) -> dict[str, float]:
    import aiohttp

    ttft, rates, totals = [], [], []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await one_stream(session, url, 4)  # warm up
        for _ in range(rounds):
            begin = time.perf_counter()
            results = await asyncio.gather(*(one_stream(session, url, tokens) for _ in range(count)))
            wall = time.perf_counter() - begin
            totals.append(sum(r[2] for r in results) / wall)
            for first, seconds, generated in results:
                ttft.append(first)
                rates.append((generated - 1) / max(seconds - first, 1e-9))
    return {"ttft_p50": 1000 * float(np.percentile(ttft, 50)), "ttft_p99": 1000 * float(np.percentile(ttft, 99)),
            "per_stream": float(np.median(rates)), "total": float(np.median(totals))}


def checkpoint(path: str | None, work: str) -> Path:
    import subprocess

    if path and (Path(path) / "manifest.json").is_file():
        return Path(path)
    out = Path(work) / "generator"
    print("making a small GPT-2 generator checkpoint (a few steps on generated data) ...", flush=True)
    subprocess.run([sys.executable, "-m", "apps.cli", "train", "generator", "--out", str(out), "--synthetic",
                    "--size", "small", "--max-steps", "5", "--no-evaluate"], cwd=REPO, check=True,
                   capture_output=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=3164)
    args = parser.parse_args()
    from serving.server import start_server, stop_server, wait_ready
    from training.checkpoint import read_manifest

    console = Console(width=None if sys.stdout.isatty() else 140)
    with tempfile.TemporaryDirectory() as work:
        ckpt = checkpoint(args.checkpoint, work)
        described = read_manifest(ckpt).training.get("described", "")
        log = Path(work) / "serve.log"
        process = start_server("generator", ckpt, args.port, "torch", log=log,
                               options={"max_batch": max(args.streams), "max_concurrent": max(args.streams)})
        url = f"http://127.0.0.1:{args.port}"
        try:
            wait_ready(url, process, timeout=300, log=log)
            rows = {n: asyncio.run(streams_at_once(url, n, args.tokens, args.rounds)) for n in args.streams}
        finally:
            stop_server(process)
    base = rows[args.streams[0]]["total"]
    table = Table(title=f"generator API, streamed over HTTP, {args.tokens} new tokens per stream (greedy), "
                        f"{args.rounds} rounds; {described}")
    for column in ("streams at once", "first token p50 ms", "first token p99 ms", "tokens/s per stream",
                   "total tokens/s", f"vs {args.streams[0]} stream(s)"):
        table.add_column(column, justify="right")
    for n, row in rows.items():
        table.add_row(str(n), f"{row['ttft_p50']:.1f}", f"{row['ttft_p99']:.1f}", f"{row['per_stream']:.1f}",
                      f"{row['total']:.1f}", f"{row['total'] / base:.2f}x")
    console.print(table)
    console.print(f"checkpoint: {ckpt}")


if __name__ == "__main__":
    main()
