"""How the sales forecaster's cost grows with the number of series, on generated M5-format data (up to the full
30,490 series x 1,913 days): reading the files, building the network's day covariates, building the trees' lag
table, one epoch of the LSTM (windows every `--stride` days) and one LightGBM fit (the 28-days-ahead model), with each
size's peak memory. Each size runs in its own process, so its peak resident memory is its own.

    python bench/sales_scale.py [--series 1000 10000 30490] [--stride 91] [--rounds 100] [--batch-size 1024]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(series: int, stride: int, rounds: int, batch_size: int, work: Path) -> dict[str, float]:
    """One size, in this process: seconds per stage and the peak resident memory."""
    import numpy as np
    import polars as pl
    import torch

    from training.baselines.forecasters import TREE_HISTORY
    from training.data.m5_features import feature_columns, lag_features, long_table
    from training.data.m5_synthetic import synthesize_m5
    from training.models import build_model
    from training.tasks import sales

    row: dict[str, float] = {"series": series}
    start = time.perf_counter()
    synthesize_m5(work, series=series, seed=0)
    row["generate_s"] = time.perf_counter() - start

    start = time.perf_counter()
    data = sales.load_data(work)
    row["read_and_covariates_s"] = time.perf_counter() - start

    start = time.perf_counter()
    origin = data.test_start - 1
    table = long_table(data.m5.sales[:, :origin + 1], data.alive[:, :origin + 1] > 0, data.covariates, data.codes,
                       origin + 1 + sales.HORIZON)
    features = lag_features(table, 28)
    rows = features.filter((pl.col("day") <= origin) & (pl.col("day") > origin - TREE_HISTORY)
                           & pl.col("sales").is_not_null())
    row["lag_table_s"] = time.perf_counter() - start
    row["lag_table_rows"] = len(features)

    start = time.perf_counter()
    import lightgbm as lgb

    columns = feature_columns(28)
    model = lgb.LGBMRegressor(objective="tweedie", n_estimators=rounds, learning_rate=0.05, num_leaves=31,
                              verbose=-1)
    model.fit(rows.select(columns).to_pandas(), rows["sales"].to_numpy())
    row["lightgbm_fit_s"] = time.perf_counter() - start
    row["lightgbm_rows"] = len(rows)
    del table, features, rows

    options = {"model": "lstm", "context": 112, "hidden": 64, "layers": 1}
    origins = sales.training_origins(data, 112, stride)
    windows = sales.SalesWindows(data, origins, 112)
    net = build_model(sales.model_config(options, data.vocab))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    order = np.random.default_rng(0).permutation(len(windows))
    start = time.perf_counter()
    for first in range(0, len(order) - batch_size + 1, batch_size):
        batch = windows.__getitems__(order[first:first + batch_size].tolist())
        loss = sales.scaled_mse(net, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    row["lstm_epoch_s"] = time.perf_counter() - start
    row["lstm_windows"] = len(windows)
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, nargs="+", default=[1000, 10000, 30490])
    parser.add_argument("--stride", type=int, default=91, help="days between an LSTM epoch's window origins")
    parser.add_argument("--rounds", type=int, default=100, help="LightGBM boosting rounds")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: measure this size, print JSON
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as work:
            print(json.dumps(measure(args.one, args.stride, args.rounds, args.batch_size, Path(work))))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sales forecaster cost by number of series (LSTM windows every {args.stride} days, "
                        f"batch {args.batch_size}; LightGBM {args.rounds} rounds)")
    columns = ["series", "generate_s", "read_and_covariates_s", "lag_table_s", "lag_table_rows", "lightgbm_rows",
               "lightgbm_fit_s", "lstm_windows", "lstm_epoch_s", "peak_rss_gb"]
    headers = ["series", "generate s", "read + covariates s", "lag table s", "table rows", "LightGBM rows",
               "LightGBM fit s", "LSTM windows", "LSTM epoch s", "peak RSS GB"]
    for header in headers:
        table.add_column(header, justify="right")
    for series in args.series:
        command = [sys.executable, __file__, "--one", str(series), "--stride", str(args.stride), "--rounds",
                   str(args.rounds), "--batch-size", str(args.batch_size)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if result.returncode != 0:
            table.add_row(str(series), *["-"] * (len(columns) - 2), result.stderr.strip().splitlines()[-1][:60])
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        table.add_row(*(f"{row[c]:,.0f}" if c.endswith(("rows", "windows")) or c == "series" else f"{row[c]:.1f}"
                        for c in columns))
    Console(width=180).print(table)


if __name__ == "__main__":
    main()
