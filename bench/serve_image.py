"""Latency and throughput of the image API over HTTP, per runtime and client concurrency: one 32x32 PNG per request
(multipart upload), p50/p95/p99 latency and requests/s. Target on a 2-core CPU: p50 <= 10 ms at concurrency 1 with
ONNX Runtime.

First it times the predictor alone (decode + model, no HTTP) at batch 1 and 32: the batch-32 cost per image bounds
what batching across requests can reach ("ceiling x" in the HTTP table).

    python bench/serve_image.py [--checkpoint runs/demo/image] [--seconds 10] [--concurrency 1 8 32]

Without --checkpoint (or when it does not exist) it trains a FastNet for a few steps on generated data first:
latency does not depend on the weights' values.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import aiohttp
import numpy as np
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.http_load import alone_table, api_bench_arguments, exported_checkpoint, http_table, ms_per_item  # noqa: E402


def png_image(ckpt: Path) -> bytes:
    from PIL import Image

    example = next((ckpt / "examples").glob("*.png"), None)
    if example is not None:
        return example.read_bytes()
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def predictor_alone(ckpt: Path, runtime: str, raw: bytes, images: int = 640) -> dict[int, float]:
    """Milliseconds per image of ImagePredictor.predict (decode and model, in this process) at batch 1 and 32."""
    from serving.image_predictor import ImagePredictor

    return ms_per_item(ImagePredictor(ckpt, runtime).predict, raw, images)


def upload(url: str, raw: bytes):
    async def send(session: aiohttp.ClientSession) -> int:
        form = aiohttp.FormData()
        form.add_field("files", raw, filename="image.png", content_type="image/png")
        async with session.post(url, data=form) as response:
            await response.read()
            return response.status
    return send


def main() -> None:
    args = api_bench_arguments(__doc__, "image", 3156)
    console = Console(width=None if sys.stdout.isatty() else 140)
    with tempfile.TemporaryDirectory() as work:
        ckpt = exported_checkpoint(args.checkpoint, work, "image", ["--max-steps", "2", "--batch-size", "64"],
                                   "a FastNet image checkpoint (a few steps on generated data)")
        raw = png_image(ckpt)
        alone, ceiling = alone_table(args.runtimes, lambda runtime: predictor_alone(ckpt, runtime, raw), "image",
                                     "image predictor alone (PNG decode + model, no HTTP), one 32x32 PNG repeated")
        console.print(alone)
        table = http_table("image", ckpt, args.runtimes, args.concurrency, args.seconds, args.port,
                           lambda url: upload(f"{url}/classify", raw), ceiling,
                           f"image API over HTTP, one 32x32 PNG per request (multipart), {args.seconds:.0f} s per row",
                           work, console)
        console.print(alone)
        console.print(table)
        console.print(f"checkpoint: {ckpt}")


if __name__ == "__main__":
    main()
