"""How the sales forecaster's cost grows with the number of series, on generated M5-format data (up to the full
30,490 series x 1,913 days): reading the files and building the network's day covariates, building the trees' feature
matrix (the 28-days-ahead bucket's), one LightGBM fit on it, and one epoch of the LSTM (windows every `--stride`
days), with the peak memory after each stage. Each size runs in its own process (the data generated in another), so
its peak resident memory is the forecaster's own.

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
    import torch

    from training.baselines.forecasters import TREE_HISTORY
    from training.data.m5_features import ID_FIELDS, tree_matrix
    from training.models import build_model
    from training.tasks import sales

    def peak_gb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2

    row: dict[str, float] = {"series": series}
    start = time.perf_counter()
    data = sales.load_data(work)
    row["read_and_covariates_s"] = time.perf_counter() - start
    row["read_gb"] = peak_gb()

    start = time.perf_counter()
    rows = tree_matrix(data.m5.sales, data.alive > 0, data.covariates, data.codes, data.test_start - 1, 28,
                       TREE_HISTORY)
    row["tree_features_s"] = time.perf_counter() - start
    row["tree_features_gb"] = peak_gb()
    row["lightgbm_rows"] = len(rows.x)

    start = time.perf_counter()
    import lightgbm as lgb

    columns = rows.columns
    model = lgb.LGBMRegressor(objective="tweedie", n_estimators=rounds, learning_rate=0.05, num_leaves=31,
                              verbose=-1)
    model.fit(rows.x, rows.y, feature_name=columns, categorical_feature=ID_FIELDS)
    row["lightgbm_fit_s"] = time.perf_counter() - start
    row["lightgbm_gb"] = peak_gb()
    del rows, model

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
    row["peak_rss_gb"] = peak_gb()
    return row


def generate(series: int, work: Path) -> dict[str, float]:
    """The data, in a process of its own so that the generator's memory is not counted as the forecaster's."""
    from training.data.m5_synthetic import synthesize_m5

    start = time.perf_counter()
    synthesize_m5(work, series=series, seed=0)
    return {"generate_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, nargs="+", default=[1000, 10000, 30490])
    parser.add_argument("--stride", type=int, default=91, help="days between an LSTM epoch's window origins")
    parser.add_argument("--rounds", type=int, default=100, help="LightGBM boosting rounds")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: measure this size, print JSON
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)  # a child process: write the data
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one or args.generate:
        row = (measure(args.one, args.stride, args.rounds, args.batch_size, args.work) if args.one
               else generate(args.generate, args.work))
        print(json.dumps(row))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sales forecaster cost by number of series (LSTM windows every {args.stride} days, "
                        f"batch {args.batch_size}; LightGBM {args.rounds} rounds; peak resident memory so far after "
                        "each stage)")
    columns = {"series": "series", "generate_s": "generate s", "read_and_covariates_s": "read + covariates s",
               "read_gb": "GB", "tree_features_s": "tree features s", "tree_features_gb": "GB",
               "lightgbm_rows": "LightGBM rows",
               "lightgbm_fit_s": "LightGBM fit s", "lightgbm_gb": "GB", "lstm_windows": "LSTM windows",
               "lstm_epoch_s": "LSTM epoch s", "peak_rss_gb": "peak GB"}
    for header in columns.values():
        table.add_column(header, justify="right")
    for series in args.series:
        row = {}
        with tempfile.TemporaryDirectory() as work:
            for step in ("--generate", "--one"):
                command = [sys.executable, __file__, step, str(series), "--work", work, "--stride", str(args.stride),
                           "--rounds", str(args.rounds), "--batch-size", str(args.batch_size)]
                result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
                if result.returncode != 0:
                    row["error"] = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1][:60]
                    break
                row.update(json.loads(result.stdout.strip().splitlines()[-1]))
        if "error" in row:
            table.add_row(str(series), *["-"] * (len(columns) - 2), row["error"])
            continue
        table.add_row(*(f"{row[c]:,.0f}" if c.endswith(("rows", "windows")) or c == "series" else f"{row[c]:.1f}"
                        for c in columns))
    Console(width=180).print(table)


if __name__ == "__main__":
    main()
