"""Latency and throughput of the sales API over HTTP: one known series' 28-day forecast per request (the features
come from the history stored in the checkpoint), p50/p95/p99 latency and requests/s per runtime and concurrency.

First it times the predictor alone (features + model, no HTTP). The service answers one series per request without
batching across requests, so the predictor's rate bounds what the server can reach ("ceiling x" in the HTTP table).

    python bench/serve_sales.py [--checkpoint runs/demo/sales] [--seconds 10] [--concurrency 1 8 32]

Without --checkpoint (or when it does not exist) it trains an LSTM for a few steps on generated data first: latency
does not depend on the weights' values.
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
    ms_per_item,  # noqa: E402
)


def predictor_alone(ckpt: Path, runtime: str, series_id: str, forecasts: int = 320) -> dict[int, float]:
    from serving.sales_predictor import SalesPredictor

    predictor = SalesPredictor(ckpt, runtime)
    return ms_per_item(lambda ids: [predictor.forecast_known(i, 28) for i in ids], series_id, forecasts)


def main() -> None:
    args = api_bench_arguments(__doc__, "sales", 3157)
    console = Console(width=None if sys.stdout.isatty() else 140)
    with tempfile.TemporaryDirectory() as work:
        ckpt = exported_checkpoint(args.checkpoint, work, "sales", ["--max-steps", "2", "--baselines", "none"],
                                   "an LSTM sales checkpoint (a few steps on generated data)")
        series_id = (ckpt / "series.csv").read_text().splitlines()[1].split(",")[0]
        alone, ceiling = alone_table(args.runtimes, lambda runtime: predictor_alone(ckpt, runtime, series_id),
                                     "forecast", f"sales predictor alone (features + model, no HTTP), {series_id}, "
                                                 "28 days")
        console.print(alone)
        table = http_table("sales", ckpt, args.runtimes, args.concurrency, args.seconds, args.port,
                           lambda url: json_post(f"{url}/forecast", {"series_id": series_id, "horizon": 28}),
                           ceiling, f"sales API over HTTP, one known series' 28-day forecast per request, "
                                    f"{args.seconds:.0f} s per row", work, console)
        console.print(alone)
        console.print(table)
        console.print(f"checkpoint: {ckpt}")


if __name__ == "__main__":
    main()
