"""Generated M5 data in the published file format, at any size up to the full competition (30,490 series x 1,941
days), with the real hierarchy: 3 states, 10 stores, 3 categories, 7 departments, 3,049 items.

Demand has what makes M5 hard: weekly and yearly seasonality, events, SNAP days lifting food sales in their state,
price changes and promotions that move demand, intermittent (mostly zero) series, products launched part-way through,
and the stores closed on Christmas day. Every array is built at once with numpy; nothing loops over days.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

STORES = {"CA": 4, "TX": 3, "WI": 3}
DEPARTMENTS = {"FOODS_1": 216, "FOODS_2": 398, "FOODS_3": 823, "HOBBIES_1": 416, "HOBBIES_2": 149,
               "HOUSEHOLD_1": 532, "HOUSEHOLD_2": 515}  # items per department in the real M5 (3,049 in all)
FIRST_DATE, CALENDAR_DAYS, FIRST_WEEK = "2011-01-29", 1969, 11101
# (name, type, month, day); Thanksgiving moves, so it is placed by rule below
EVENTS = [("NewYear", "National", 1, 1), ("ValentinesDay", "Cultural", 2, 14), ("StPatricksDay", "Cultural", 3, 17),
          ("IndependenceDay", "National", 7, 4), ("Halloween", "Cultural", 10, 31),
          ("Christmas", "National", 12, 25)]
SNAP_DAYS = {"CA": range(1, 11), "TX": (1, 3, 5, 6, 7, 9, 11, 12, 15), "WI": (2, 3, 5, 6, 8, 9, 11, 14, 15)}


def synthesize_calendar() -> pd.DataFrame:
    dates = pd.date_range(FIRST_DATE, periods=CALENDAR_DAYS, freq="D")
    wday = (dates.dayofweek + 2) % 7 + 1  # M5 counts from Saturday = 1
    frame = pd.DataFrame({"date": dates.strftime("%Y-%m-%d"),
                          "wm_yr_wk": FIRST_WEEK + np.arange(CALENDAR_DAYS) // 7,
                          "weekday": dates.day_name(), "wday": wday, "month": dates.month, "year": dates.year,
                          "d": [f"d_{i}" for i in range(1, CALENDAR_DAYS + 1)]})
    name = pd.Series(pd.NA, index=frame.index, dtype="object")
    kind = name.copy()
    for event, event_type, month, day in EVENTS:
        hit = (dates.month == month) & (dates.day == day)
        name[hit], kind[hit] = event, event_type
    thanksgiving = (dates.month == 11) & (dates.dayofweek == 3) & (dates.day >= 22) & (dates.day <= 28)
    name[thanksgiving], kind[thanksgiving] = "Thanksgiving", "National"
    frame["event_name_1"], frame["event_type_1"] = name, kind
    frame["event_name_2"], frame["event_type_2"] = pd.NA, pd.NA
    for state, days in SNAP_DAYS.items():
        frame[f"snap_{state}"] = np.isin(dates.day, list(days)).astype(int)
    return frame


def hierarchy(series: int) -> pd.DataFrame:
    """The id columns of `series` series: items spread over the departments in the real proportions, each sold in
    every store (item-major, as the real file orders them within a department)."""
    stores = [f"{state}_{i}" for state, count in STORES.items() for i in range(1, count + 1)]
    total_items = sum(DEPARTMENTS.values())
    items_needed = min(total_items, -(-series // len(stores)))
    rows = []
    for dept, count in DEPARTMENTS.items():
        keep = max(1, math.ceil(count * items_needed / total_items))
        for number in range(1, min(count, keep) + 1):
            item = f"{dept}_{number:03d}"
            rows.extend((f"{item}_{store}_validation", item, dept, dept.rsplit("_", 1)[0], store, store[:2])
                        for store in stores)
    frame = pd.DataFrame(rows, columns=["id", "item_id", "dept_id", "cat_id", "store_id", "state_id"])
    return frame.iloc[:series].reset_index(drop=True)


def synthesize_m5(out: Path, series: int = 100, days: int = 1913, seed: int = 0) -> list[Path]:
    """Write calendar.csv, sales_train_validation.csv (1913 days) or sales_train_evaluation.csv (1941 days) and
    sell_prices.csv to `out`."""
    if not 1 <= series <= 30490 or days not in (1913, 1941):
        raise ValueError("series must be 1..30490 and days 1913 (validation file) or 1941 (evaluation file)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    calendar = synthesize_calendar()
    ids = hierarchy(series)
    n = len(ids)
    day = np.arange(CALENDAR_DAYS)
    week = day // 7

    # prices: an item's base price, a store markup, step changes and two-week promotions; none before launch
    items, item_index = np.unique(ids["item_id"], return_inverse=True)
    base = np.exp(rng.normal(1.2, 0.8, len(items)))[item_index] * rng.uniform(0.95, 1.05, n)
    weeks = week[-1] + 1
    steps = np.cumprod(np.where(rng.random((n, weeks)) < 0.01, rng.uniform(0.85, 1.2, (n, weeks)), 1.0), axis=1)
    promo = rng.random((n, weeks)) < 0.02
    promo |= np.roll(promo, 1, axis=1)
    weekly_price = np.round(base[:, None] * steps * np.where(promo, 0.75, 1.0), 2)
    launch = np.where(rng.random(n) < 0.3, rng.integers(30, days - 120, n), rng.integers(0, 30, n))
    launch_week = launch // 7

    # demand: level x weekday x season x events x SNAP (foods) x price response, gamma-mixed Poisson counts
    level = np.exp(rng.normal(-0.2, 1.1, n))
    weekday_profile = np.array([1.25, 1.3, 1.1, 0.9, 0.85, 0.85, 0.95])  # Saturday first, as wday counts
    wday = calendar["wday"].to_numpy() - 1
    season = 1 + 0.15 * np.sin(2 * np.pi * (day[None, :] / 365.25 + rng.random(n)[:, None]))
    event = np.where(calendar["event_name_1"].notna().to_numpy(), 1.3, 1.0)
    is_food = (ids["cat_id"] == "FOODS").to_numpy()
    snap = np.stack([calendar[f"snap_{s}"].to_numpy() for s in ids["state_id"]])
    snap_lift = 1 + 0.25 * snap * is_food[:, None]
    elasticity = rng.uniform(1.0, 2.5, n)
    price = weekly_price[:, week]
    relative = price / base[:, None]
    trend = np.exp(rng.normal(0, 0.2, n)[:, None] * day[None, :] / CALENDAR_DAYS)
    rate = (level[:, None] * weekday_profile[wday][None, :] * season * event[None, :] * snap_lift * trend
            * relative ** -elasticity[:, None])
    rate *= rng.gamma(2.0, 0.5, rate.shape)  # day-to-day overdispersion
    sales = rng.poisson(rate[:, :days]).astype(np.int32)
    sales[day[None, :days] < launch[:, None]] = 0
    christmas = calendar["date"].str.endswith("-12-25").to_numpy()[:days]
    sales[:, christmas] = 0  # every store closed

    calendar.to_csv(out / "calendar.csv", index=False)
    name = "sales_train_validation.csv" if days == 1913 else "sales_train_evaluation.csv"
    wide = pd.concat([ids, pd.DataFrame(sales, columns=[f"d_{i}" for i in range(1, days + 1)])], axis=1)
    wide.to_csv(out / name, index=False)
    on_sale = week[None, :weeks * 7:7] >= launch_week[:, None]  # one entry per week
    rows, cols = np.nonzero(on_sale)
    prices = pd.DataFrame({"store_id": ids["store_id"].to_numpy()[rows], "item_id": ids["item_id"].to_numpy()[rows],
                           "wm_yr_wk": FIRST_WEEK + cols, "sell_price": weekly_price[rows, cols]})
    prices.to_csv(out / "sell_prices.csv", index=False)
    return [out / "calendar.csv", out / name, out / "sell_prices.csv"]


def stage_real_subset(m5_root: Path, out: Path) -> Path:
    """The real files under `m5_root` (../shared/data/m5) as one folder the reader takes: the calendar, the 10 real
    series, and their prices, which come as a tab-separated export with an index column (converted here to the
    published comma layout, so that the reader only ever sees the real format)."""
    m5_root, out = Path(m5_root), Path(out)
    subset = m5_root / "subset_zama-github_SPOT"
    out.mkdir(parents=True, exist_ok=True)
    for name, source in (("calendar.csv", m5_root / "calendar.csv"),
                         ("sales_train_validation.csv", subset / "sales_train_validation.csv")):
        target = out / name
        if not target.exists():
            target.symlink_to(source.resolve())
    prices = out / "sell_prices.csv"
    if not prices.exists():
        export = pd.read_csv(subset / "sell_prices", sep="\t", index_col=0)
        export[["store_id", "item_id", "wm_yr_wk", "sell_price"]].to_csv(prices.with_suffix(".tmp"), index=False)
        prices.with_suffix(".tmp").replace(prices)
    return out
