"""Latency and throughput of the sales API over HTTP: one known series' 28-day forecast per request (the features
come from the history stored in the checkpoint), p50/p95/p99 latency and requests/s per runtime and concurrency;
then many series per request (POST /forecast_many with --many series, on a generated --many-series checkpoint)
beside one series per request, in series forecast per second.

First it times the predictor alone (features + model, no HTTP). The service answers one series per request without
batching across requests, so the predictor's rate bounds what the server can reach ("ceiling x" in the HTTP table).

    python bench/serve_sales.py [--checkpoint runs/demo/sales] [--seconds 10] [--concurrency 1 8 32] [--many 1000]

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
    return ms_per_item(lambda ids: predictor.forecast_many(ids, 28), series_id, forecasts)


def many_series_table(series: int, runtimes: list[str], seconds: float, port: int, work: Path, console):
    """Series forecast per second over HTTP: one per /forecast request against all `series` in one /forecast_many
    request, on an LSTM trained a few steps on `series` generated series."""
    import asyncio
    import subprocess

    import numpy as np
    from rich.table import Table

    from bench.http_load import load
    from serving.server import start_server, stop_server, wait_ready
    from training.data.m5_synthetic import synthesize_m5

    console.print(f"making a {series:,}-series checkpoint ...")
    synthesize_m5(work / "m5-many", series=series, seed=0)
    ckpt, cli = work / "sales-many", [sys.executable, "-m", "apps.cli"]
    subprocess.run([*cli, "train", "sales", "--out", str(ckpt), "--data-dir", str(work / "m5-many"), "--max-steps",
                    "2", "--baselines", "none"], cwd=REPO, check=True, capture_output=True)
    subprocess.run([*cli, "export", str(ckpt)], cwd=REPO, check=True, capture_output=True)
    ids = (ckpt / "series.csv").read_text().splitlines()[1:]
    ids = [line.split(",")[0] for line in ids]
    table = Table(title=f"sales API over HTTP: {series:,} known series, one per request or all in one, one client, "
                        f"{seconds:.0f} s per row")
    for column in ("runtime", "request", "requests", "p50 ms", "series/s", "x one per request"):
        table.add_column(column, justify="right")
    for runtime in runtimes:
        log, url = work / f"serve-many-{runtime}.log", f"http://127.0.0.1:{port}"
        server = start_server("sales", ckpt, port, runtime, options={"max_series": series}, log=log)
        try:
            wait_ready(url, server, log=log)
            base = None
            for label, route, body, per_request in (
                    ("one series", "/forecast", {"series_id": ids[0], "horizon": 28}, 1),
                    (f"{series:,} series", "/forecast_many", {"series_ids": ids, "horizon": 28}, series)):
                latencies, rate, _ = asyncio.run(load(json_post(f"{url}{route}", body), 1, seconds))
                base = base or rate * per_request
                table.add_row(runtime, label, str(len(latencies)), f"{np.median(latencies) * 1000:.1f}",
                              f"{rate * per_request:,.0f}", f"{rate * per_request / base:.1f}")
        finally:
            stop_server(server)
    return table


def main() -> None:
    args = api_bench_arguments(__doc__, "sales", 3157, many=1000)
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
        many = many_series_table(args.many, args.runtimes, args.seconds, args.port, Path(work), console)
        console.print(alone)
        console.print(table)
        console.print(many)
        console.print(f"checkpoint: {ckpt}")


if __name__ == "__main__":
    main()
