"""M5 files: the reader and its errors, the generator's format and hierarchy, cleaning, the features (no leakage),
and WRMSSE, checked against the organisers' own weights for the real series."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import assert_clean_failure, real_m5, run_cli_here
from training.data.errors import DataFormatError
from training.data.m5 import load_m5, read_sales
from training.data.m5_features import feature_columns, lag_features, long_table, price_covariates
from training.data.m5_synthetic import DEPARTMENTS, hierarchy, synthesize_m5
from training.metrics.wrmsse import WRMSSE, naive_scale


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("m5-gen")
    synthesize_m5(out, series=50, seed=7)
    return out


def test_generated_data_reads_back_with_the_real_hierarchy(generated):
    data = load_m5(generated)
    assert data.sales.shape == (50, 1913) and data.first_day == 1
    assert data.prices.shape == (50, 1969)  # prices run to the calendar's end: the days to forecast have them
    assert set(data.ids["state_id"]) <= {"CA", "TX", "WI"}
    zeros = (data.sales == 0).mean()
    assert 0.2 < zeros < 0.95, "intermittent demand"
    christmas = data.calendar["date"].dt.strftime("%m-%d").to_numpy()[:1913] == "12-25"
    assert data.sales[:, christmas].sum() == 0, "stores closed on Christmas"
    started = data.started()
    launched_late = np.argmax(started, axis=1) > 60
    assert launched_late.any(), "some products launch part-way through"
    first_price = np.argmax(np.isfinite(data.prices), axis=1)
    assert (first_price[launched_late] > 0).all(), "no price before a product is on sale"


def test_full_size_hierarchy():
    ids = hierarchy(30490)
    assert len(ids) == 30490 and ids["item_id"].nunique() == sum(DEPARTMENTS.values()) == 3049
    assert ids["store_id"].nunique() == 10 and ids["dept_id"].nunique() == 7 and ids["cat_id"].nunique() == 3


def _copy_with(generated: Path, tmp_path: Path, name: str, edit) -> Path:
    out = tmp_path / "m5"
    out.mkdir()
    for path in generated.iterdir():
        (out / path.name).write_text(path.read_text())
    path = out / name
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    return out


@pytest.mark.parametrize(("name", "edit", "message"), [
    ("sales_train_validation.csv", lambda lines: [lines[0].replace("store_id,", "")] + lines[1:],
     "sales_train_validation.csv:1: missing columns store_id"),
    ("sales_train_validation.csv", lambda lines: lines[:3] + [lines[3].rsplit(",", 1)[0] + ",many"] + lines[4:],
     "sales_train_validation.csv:4: column d_1913 is 'many', not a number"),
    ("sales_train_validation.csv", lambda lines: [lines[0].replace("d_7,", "d_70,")] + lines[1:],
     "unknown day column 'd_70'"),
    ("sell_prices.csv", lambda lines: [lines[0].replace("sell_price", "price")] + lines[1:],
     "sell_prices.csv:1: missing columns sell_price"),
    ("calendar.csv", lambda lines: lines[:5] + lines[6:], "calendar.csv:6: day 'd_6' out of order; expected d_5"),
])
def test_bad_files_get_one_line_naming_file_and_line(generated, tmp_path, name, edit, message):
    folder = _copy_with(generated, tmp_path, name, edit)
    with pytest.raises(DataFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_m5(folder)
    result = run_cli_here("train", "sales", "--out", tmp_path / "ckpt", "--data-dir", folder, "--max-steps", "1")
    assert_clean_failure(result, name)


def test_sales_days_past_the_calendar_are_refused(generated, tmp_path):
    folder = _copy_with(generated, tmp_path, "calendar.csv", lambda lines: lines[:1901])
    with pytest.raises(DataFormatError, match="d_1913 is past the calendar's last day d_1900"):
        load_m5(folder)


def test_negative_sales_named_by_line(generated, tmp_path):
    folder = _copy_with(generated, tmp_path, "sales_train_validation.csv",
                        lambda lines: lines[:2] + [lines[2].rsplit(",", 1)[0] + ",-1"] + lines[3:])
    with pytest.raises(DataFormatError, match="sales_train_validation.csv:3: sales must be non-negative"):
        read_sales(folder / "sales_train_validation.csv")


def test_missing_prices_carry_forward_within_an_items_life(tmp_path):
    synthesize_m5(tmp_path, series=10, seed=1)
    prices = pd.read_csv(tmp_path / "sell_prices.csv")
    first = prices.iloc[0]
    dropped = prices[~((prices.store_id == first.store_id) & (prices.item_id == first.item_id)
                       & (prices.wm_yr_wk == first.wm_yr_wk + 3))]
    dropped.to_csv(tmp_path / "sell_prices.csv", index=False)
    data = load_m5(tmp_path)
    series = int(np.flatnonzero((data.ids.store_id == first.store_id) & (data.ids.item_id == first.item_id))[0])
    week_days = np.flatnonzero(data.calendar["wm_yr_wk"].to_numpy() == first.wm_yr_wk + 3)
    before = np.flatnonzero(data.calendar["wm_yr_wk"].to_numpy() == first.wm_yr_wk + 2)[-1]
    assert np.allclose(data.prices[series, week_days], data.prices[series, before])


def test_price_covariates_are_causal():
    prices = np.array([[np.nan, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 1.0]], dtype=np.float32)
    relative, change, priced = price_covariates(prices)
    assert priced[0].tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1]
    assert relative[0, 3] == pytest.approx(4.0 / (8.0 / 3))  # the mean of the prices so far, not of all of them
    assert change[0, 8] == pytest.approx(1.0 / 2.0 - 1.0)  # against the price a week before


def test_lag_features_only_see_days_old_enough():
    sales = np.arange(1, 101, dtype=np.float32)[None, :]
    covariates = np.zeros((1, 128, 9), dtype=np.float32)
    table = long_table(sales, np.ones_like(sales, dtype=bool), covariates, np.ones((1, 5), dtype=np.int64), 128)
    features = lag_features(table, 7)
    row = features.filter(features["day"] == 104).to_dicts()[0]  # 4 days past the history
    assert row["lag_7"] == sales[0, 97] and row["lag_14"] == sales[0, 90]
    assert row["mean_7"] == pytest.approx(sales[0, 91:98].mean())  # the 7 days ending 7 days back
    assert set(feature_columns(7)) <= set(features.columns)


def test_tree_matrix_built_in_slices_equals_the_whole_table(generated, monkeypatch):
    import polars as pl

    from training.data import m5_features
    from training.tasks.sales import load_data

    data = load_data(generated)
    origin, shift, history = 1885, 14, 400
    started = data.alive > 0
    whole = lag_features(long_table(data.m5.sales[:, :origin + 1], started[:, :origin + 1], data.covariates,
                                    data.codes, origin + 1 + 28), shift)
    columns = feature_columns(shift)
    expected = whole.filter(pl.col("day").is_between(origin - history + 1, origin) & pl.col("sales").is_not_null())
    ahead = whole.filter(pl.col("day").is_between(origin + shift - 6, origin + shift))
    monkeypatch.setattr(m5_features, "CHUNK_ROWS", 7 * 1000)  # 8 series a slice: the last one is short
    rows = m5_features.tree_matrix(data.m5.sales, started, data.covariates, data.codes, origin, shift, history)
    assert rows.columns == columns and rows.x.dtype == np.float32
    np.testing.assert_array_equal(rows.x, expected.select(columns).to_numpy().astype(np.float32))
    np.testing.assert_array_equal(rows.y, expected["sales"].to_numpy())
    np.testing.assert_array_equal(rows.predict_x, ahead.select(columns).to_numpy().astype(np.float32))
    assert rows.predict_series.tolist() == ahead["series"].to_list()
    assert rows.predict_day.tolist() == ahead["day"].to_list()


def test_naive_scale_counts_from_the_first_sale():
    history = np.array([[0, 0, 0, 2, 0, 2, 4]], dtype=np.float32)
    # changes from day 3 on: 2->0, 0->2, 2->4 (the launch step 0->2 is not counted)
    assert naive_scale(history)[0] == pytest.approx((4 + 4 + 4) / 3)


def test_a_perfect_forecast_scores_zero_and_naive_scores_about_one(generated):
    data = load_m5(generated)
    metric = WRMSSE.fit(data.ids, data.sales[:, :-28], data.prices[:, :1885])
    actual = data.sales[:, -28:]
    assert metric(actual, actual) == 0.0
    assert len(metric.per_level(actual, actual)) == 12
    assert 0.3 < metric(actual, np.repeat(data.sales[:, -29:-28], 28, axis=1)) < 3


@pytest.mark.skipif(real_m5() is None and not os.environ.get("CI"), reason="the real M5 series are not here")
def test_weights_match_the_organisers_for_the_real_series(m5_dir):
    """The official weights_validation.csv (all of M5), renormalised over the 10 real series at the bottom level,
    against the weights computed from their sales and prices over d_1886..d_1913."""
    if real_m5() is None:
        pytest.fail("CI runs with the real data beside the checkout")
    data = load_m5(m5_dir)
    metric = WRMSSE.fit(data.ids, data.sales, data.prices[:, :data.days])
    ours = metric.weight_table().query("Level_id == 'Level12'")
    official = pd.read_csv(real_m5() / "weights_validation.csv").query("Level_id == 'Level12'")
    merged = ours.merge(official, on=["Agg_Level_1", "Agg_Level_2"], suffixes=("", "_official"))
    assert len(merged) == 10
    merged["Weight_official"] /= merged["Weight_official"].sum()
    assert np.allclose(merged["Weight"], merged["Weight_official"], atol=1e-3)
    assert (merged.query("Weight_official == 0")["Weight"] == 0).all()  # the series without sales at the end
