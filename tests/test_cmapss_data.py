from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_clean_failure, real_cmapss, run_cli_here
from training.data.cmapss import (
    TurbofanPreprocessor,
    load_subset,
    read_cycles,
    rul_targets,
    synthesize_subset,
    windows_per_cycle,
)
from training.data.errors import DataFormatError

GOOD_ROW = "1 1 -0.0007 -0.0004 100.0 " + " ".join(["518.67"] * 21)


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("1 2 0.0 0.0 100.0 " + " ".join(["1.0"] * 20), "expected 26 space-separated columns, got 25"),
        ("1 2 0.0 0.0 100.0 abc " + " ".join(["1.0"] * 20), "expected numbers only"),
        ("1 2 0.0 0.0 100.0 nan " + " ".join(["1.0"] * 20), "NaN or inf"),
        ("1 1 0.0 0.0 100.0 " + " ".join(["1.0"] * 21), "cycles must rise within a unit"),
        ("1.5 2 0.0 0.0 100.0 " + " ".join(["1.0"] * 21), "positive integer unit and cycle"),
    ],
)
def test_malformed_cycles_file_names_file_and_line(tmp_path, bad_line, message):
    path = write(tmp_path / "train_FD001.txt", [GOOD_ROW, bad_line])
    with pytest.raises(DataFormatError) as info:
        read_cycles(path)
    assert f"{path}:2:" in str(info.value)
    assert message in str(info.value)


def test_rul_count_must_match_test_units(tmp_path, synthetic_cmapss):
    for name in ("train_FD001.txt", "test_FD001.txt"):
        (tmp_path / name).write_text((synthetic_cmapss / name).read_text())
    write(tmp_path / "RUL_FD001.txt", ["10", "20"])
    with pytest.raises(DataFormatError, match="expected 20 RUL values"):
        load_subset(tmp_path, "FD001")


def test_cli_reports_malformed_file_without_traceback(tmp_path, synthetic_cmapss):
    lines = (synthetic_cmapss / "train_FD001.txt").read_text().splitlines()
    lines[6] = lines[6] + " 7.0"
    write(tmp_path / "train_FD001.txt", lines)
    for name in ("test_FD001.txt", "RUL_FD001.txt"):
        (tmp_path / name).write_text((synthetic_cmapss / name).read_text())
    result = run_cli_here("train", "turbofan", "--out", tmp_path / "ckpt", "--data-dir", tmp_path, "--max-steps", "1")
    assert_clean_failure(result, f"{tmp_path / 'train_FD001.txt'}:7:", "expected 26 space-separated columns, got 27")


def test_generator_writes_real_format_for_all_subsets(tmp_path):
    for subset, conditions in (("FD001", 1), ("FD004", 6)):
        synthesize_subset(tmp_path, subset, n_train=8, n_test=5, seed=3)
        data = load_subset(tmp_path, subset)
        assert data.train.shape[1] == 26 and data.test["unit"].nunique() == 5 == len(data.test_rul)
        assert len(TurbofanPreprocessor.fit(data.train).condition_centroids) == conditions


@pytest.mark.skipif(real_cmapss() is None, reason="needs real C-MAPSS FD001 (MODELYARD_DATA)")
def test_real_fd001_sensor_selection_matches_literature():
    data = load_subset(real_cmapss(), "FD001")
    assert data.train.shape == (20631, 26) and data.test.shape == (13096, 26)
    pre = TurbofanPreprocessor.fit(data.train)
    # The 14 informative sensors used throughout the C-MAPSS literature.
    assert pre.sensors == ["s2", "s3", "s4", "s7", "s8", "s9", "s11", "s12", "s13", "s14", "s15", "s17", "s20",
                           "s21"]


def test_preprocessing_is_fitted_on_training_rows_only(cmapss_dir):
    """What the turbofan recipe trains with: the normaliser's statistics are those of the training engines' rows,
    computed here from the file, not of the validation engines' or the test rows."""
    from training.tasks.turbofan import load_data

    data = load_data(cmapss_dir, "FD001", seed=0)
    pre, train = data.preprocessor, data.subset.train
    assert len(pre.condition_centroids) == 1  # FD001: one operating condition, so one mean and std per sensor
    fitted_on = {"training engines": train[train["unit"].isin(data.train_units)],
                 "all training rows": train, "test rows": data.subset.test}
    means = {name: rows[pre.sensors].mean().to_numpy() for name, rows in fitted_on.items()}
    np.testing.assert_allclose(pre.mean[0], means["training engines"], rtol=1e-9)
    np.testing.assert_allclose(pre.std[0], fitted_on["training engines"][pre.sensors].std(ddof=0).to_numpy(),
                               rtol=1e-6)
    assert not np.allclose(pre.mean[0], means["all training rows"], rtol=0, atol=1e-9)
    assert not np.allclose(pre.mean[0], means["test rows"], rtol=0, atol=1e-9)
    restored = TurbofanPreprocessor.from_dict(pre.to_dict())
    assert np.array_equal(restored.transform(data.subset.test), pre.transform(data.subset.test))


def test_windows_align_with_cycles_and_pad_with_first_row():
    features = np.arange(10, dtype=np.float32).reshape(5, 2)
    units = np.array([1, 1, 1, 2, 2])
    w = windows_per_cycle(features, units, window=3)
    assert w.shape == (5, 3, 2)
    assert np.array_equal(w[2], features[0:3])
    assert np.array_equal(w[3], np.stack([features[3]] * 3))  # unit 2 never sees unit 1's rows
    assert np.array_equal(w[4], np.stack([features[3], features[3], features[4]]))


def test_rul_target_is_piecewise_linear_and_capped(synthetic_cmapss):
    data = load_subset(synthetic_cmapss, "FD001")
    rul = rul_targets(data.train, cap=125)
    unit1 = data.train["unit"].to_numpy() == 1
    assert rul[unit1][-1] == 0 and rul[unit1].max() == 125
    test_rul = rul_targets(data.test, np.inf, data.test_rul)
    last_rows = data.test.groupby("unit").cumcount(ascending=False).to_numpy() == 0
    assert np.array_equal(test_rul[last_rows], data.test_rul)
