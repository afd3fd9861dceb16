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

import sys
import tempfile
from pathlib import Path

from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.http_load import (  # noqa: E402
    alone_table,
    api_bench_arguments,
    exported_checkpoint,
    http_table,
    json_post,
    ms_per_item,
)
from training.checkpoint import load_tokenizer, read_manifest  # noqa: E402

TOKENS = 64


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

    return ms_per_item(NewsPredictor(ckpt, runtime).predict, text, texts)


def main() -> None:
    args = api_bench_arguments(__doc__, "news", 3155)
    console = Console(width=None if sys.stdout.isatty() else 140)  # piped output: no wrapped columns
    with tempfile.TemporaryDirectory() as work:
        ckpt = exported_checkpoint(args.checkpoint, work, "news", ["--max-steps", "1", "--no-evaluate"],
                                   "an untrained MiniLM news checkpoint (1 step on generated data)")
        text = text_of_tokens(ckpt, TOKENS)
        alone, ceiling = alone_table(args.runtimes, lambda runtime: predictor_alone(ckpt, runtime, text), "text",
                                     f"news predictor alone (tokenizer + model, no HTTP), one {TOKENS}-token text "
                                     "repeated")
        console.print(alone)
        table = http_table("news", ckpt, args.runtimes, args.concurrency, args.seconds, args.port,
                           lambda url: json_post(f"{url}/classify", {"texts": [text]}), ceiling,
                           f"news API over HTTP, one {TOKENS}-token text per request, {args.seconds:.0f} s per row",
                           work, console)
        console.print(alone)
        console.print(table)
        console.print(f"checkpoint: {ckpt}")


if __name__ == "__main__":
    main()
