"""M5 (Walmart) unit sales in the published file format, read into a wide day matrix, and a generator for it.

Files: `sales_train_validation.csv` or `sales_train_evaluation.csv` (id, item_id, dept_id, cat_id, store_id,
state_id, d_1..d_N: one row per item and store, one column per day), `calendar.csv` (date, wm_yr_wk, weekday,
wday, month, year, d, event_name_1, event_type_1, event_name_2, event_type_2, snap_CA, snap_TX, snap_WI) and
`sell_prices.csv` (store_id, item_id, wm_yr_wk, sell_price). A bad file gets one line naming the file, the line and
what is wrong.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.errors import DataFormatError, open_text

ID_COLUMNS = ["id", "item_id", "dept_id", "cat_id", "store_id", "state_id"]
CALENDAR_COLUMNS = ["date", "wm_yr_wk", "weekday", "wday", "month", "year", "d", "event_name_1", "event_type_1",
                    "event_name_2", "event_type_2", "snap_CA", "snap_TX", "snap_WI"]
PRICE_COLUMNS = ["store_id", "item_id", "wm_yr_wk", "sell_price"]
SALES_FILES = ("sales_train_evaluation.csv", "sales_train_validation.csv")


@dataclass
class M5Data:
    ids: pd.DataFrame  # one row per series: the six id columns
    sales: np.ndarray  # (series, days) float32 unit sales, day j is d_{first_day + j}
    first_day: int
    calendar: pd.DataFrame  # one row per day d_1..d_K, indexed 0..K-1 by day number - 1
    # (series, calendar days from first_day on) float32 sell price per day, NaN where the item had no price; it
    # runs past the sales to the calendar's end, since prices (like events) are known for the days to forecast.
    prices: np.ndarray
    source: dict[str, str]  # file name -> path
    fingerprint: str

    @property
    def days(self) -> int:
        return self.sales.shape[1]

    def started(self) -> np.ndarray:
        """(series, days) True from each series' first sale on: the zeros before it mean "not yet on sale"."""
        return np.cumsum(self.sales > 0, axis=1) > 0


def find_sales_file(data_dir: Path) -> Path:
    for name in SALES_FILES:
        for candidate in (data_dir / name, data_dir / f"{name}.xz"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"{data_dir}: no {' or '.join(SALES_FILES)}")


def _header(path: Path) -> list[str]:
    with open_text(path) as handle:
        return next(csv.reader(handle), [])


def _first_bad_line(path: Path, columns: list[str], numeric: list[str]) -> tuple[int, str]:
    """The first line whose numeric columns do not parse, with the offending value (for the error message)."""
    wanted = [columns.index(c) for c in numeric]
    with open_text(path) as handle:
        reader = csv.reader(handle)
        next(reader)
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(columns):
                return lineno, f"{len(row)} fields, expected {len(columns)}"
            for i in wanted:
                try:
                    float(row[i]) if row[i] != "" else None
                except ValueError:
                    return lineno, f"column {columns[i]} is {row[i]!r}, not a number"
    return -1, "unparseable"


def read_sales(path: Path) -> tuple[pd.DataFrame, np.ndarray, int]:
    """The id columns, the (series, days) sales matrix and the first day number, checking the header (the id
    columns, then consecutive d_k days) and every value (a non-negative number)."""
    columns = _header(path)
    missing = [c for c in ID_COLUMNS if c not in columns]
    if missing:
        raise DataFormatError(path, 1, f"missing columns {', '.join(missing)}")
    day_columns = columns[len(ID_COLUMNS):]
    if columns[:len(ID_COLUMNS)] != ID_COLUMNS or not day_columns:
        raise DataFormatError(path, 1, f"expected {', '.join(ID_COLUMNS)} then d_1..d_N")
    try:
        days = [int(c[2:]) for c in day_columns if c.startswith("d_")]
    except ValueError:
        days = []
    if len(days) != len(day_columns) or days != list(range(days[0], days[0] + len(days))):
        bad = next((c for i, c in enumerate(day_columns)
                    if not c.startswith("d_") or not c[2:].isdigit() or (i and int(c[2:]) != days[0] + i)), "?")
        raise DataFormatError(path, 1, f"unknown day column {bad!r}: days must be d_1, d_2, ... in order")
    try:
        frame = pd.read_csv(path, dtype={c: str for c in ID_COLUMNS}, engine="c")
        values = frame[day_columns].to_numpy(dtype=np.float32)
    except (ValueError, TypeError):
        line, problem = _first_bad_line(path, columns, day_columns)
        raise DataFormatError(path, line, problem) from None
    if np.isnan(values).any() or (values < 0).any():
        row = int(np.flatnonzero(np.isnan(values).any(axis=1) | (values < 0).any(axis=1))[0])
        raise DataFormatError(path, row + 2, "sales must be non-negative numbers (found an empty or negative one)")
    return frame[ID_COLUMNS].reset_index(drop=True), values, days[0]


def read_calendar(path: Path) -> pd.DataFrame:
    columns = _header(path)
    missing = [c for c in CALENDAR_COLUMNS if c not in columns]
    if missing:
        raise DataFormatError(path, 1, f"missing columns {', '.join(missing)}")
    frame = pd.read_csv(path, dtype={"d": str, "event_name_1": str, "event_type_1": str, "event_name_2": str,
                                     "event_type_2": str})
    expected = [f"d_{i}" for i in range(1, len(frame) + 1)]
    wrong = np.flatnonzero(frame["d"].to_numpy() != np.asarray(expected))
    if wrong.size:
        raise DataFormatError(path, int(wrong[0]) + 2, f"day {frame['d'].iloc[wrong[0]]!r} out of order; expected "
                                                       f"{expected[wrong[0]]}")
    frame["date"] = pd.to_datetime(frame["date"])
    return frame


def read_prices(path: Path) -> pd.DataFrame:
    columns = _header(path)
    missing = [c for c in PRICE_COLUMNS if c not in columns]
    if missing:
        raise DataFormatError(path, 1, f"missing columns {', '.join(missing)} (a comma-separated file with "
                                       f"{', '.join(PRICE_COLUMNS)} is expected)")
    try:
        frame = pd.read_csv(path, dtype={"store_id": str, "item_id": str})
        frame["wm_yr_wk"] = frame["wm_yr_wk"].astype(np.int64)
        frame["sell_price"] = frame["sell_price"].astype(np.float32)
    except (ValueError, TypeError):
        line, problem = _first_bad_line(path, columns, ["wm_yr_wk", "sell_price"])
        raise DataFormatError(path, line, problem) from None
    return frame


def daily_prices(ids: pd.DataFrame, calendar: pd.DataFrame, prices: pd.DataFrame, first_day: int,
                 days: int) -> np.ndarray:
    """(series, days) sell price per day from the weekly price table; a week without a price inside an item's life
    carries the last known price forward; before its first price it stays NaN (not on sale)."""
    weeks = calendar["wm_yr_wk"].to_numpy()[first_day - 1:first_day - 1 + days]
    week_index = {week: i for i, week in enumerate(pd.unique(weeks))}
    series_index = pd.Series(np.arange(len(ids)), index=pd.MultiIndex.from_frame(ids[["store_id", "item_id"]]))
    keys = pd.MultiIndex.from_frame(prices[["store_id", "item_id"]])
    rows = series_index.reindex(keys).to_numpy()
    cols = prices["wm_yr_wk"].map(week_index).to_numpy()
    known = ~(np.isnan(rows.astype(float)) | pd.isna(cols))
    weekly = np.full((len(ids), len(week_index)), np.nan, dtype=np.float32)
    weekly[rows[known].astype(int), cols[known].astype(int)] = prices["sell_price"].to_numpy()[known]
    weekly = pd.DataFrame(weekly.T).ffill().to_numpy().T  # carry forward within each series
    return weekly[:, [week_index[w] for w in weeks]].astype(np.float32)


def load_m5(data_dir: Path) -> M5Data:
    data_dir = Path(data_dir)
    paths = {"sales": find_sales_file(data_dir)}
    for name in ("calendar.csv", "sell_prices.csv"):
        path = next((p for p in (data_dir / name, data_dir / f"{name}.xz") if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{data_dir / name}: file not found")
        paths[name.split(".")[0]] = path
    ids, sales, first_day = read_sales(paths["sales"])
    calendar = read_calendar(paths["calendar"])
    last = first_day + sales.shape[1] - 1
    if last > len(calendar):
        raise DataFormatError(paths["sales"], 1, f"d_{last} is past the calendar's last day d_{len(calendar)}")
    prices = daily_prices(ids, calendar, read_prices(paths["sell_prices"]), first_day,
                          len(calendar) - first_day + 1)
    digest = hashlib.sha256()
    for path in paths.values():
        digest.update(path.read_bytes())
    return M5Data(ids, sales, first_day, calendar, prices, {k: str(v) for k, v in paths.items()},
                  digest.hexdigest())
