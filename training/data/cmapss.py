"""NASA C-MAPSS turbofan degradation data: the real file format, a generator for it, and its preprocessing.

Files per subset FD00x: train_FD00x.txt and test_FD00x.txt (26 space-separated columns: unit, cycle, three operating
settings, 21 sensors; one row per engine cycle) and RUL_FD00x.txt (one true remaining-useful-life value per test engine,
in test-unit order). Files may be stored xz-compressed beside the plain name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.data.errors import DataFormatError, find_data_file, open_text

SUBSETS = ("FD001", "FD002", "FD003", "FD004")
SETTINGS = ["setting_1", "setting_2", "setting_3"]
SENSORS = [f"s{i}" for i in range(1, 22)]
COLUMNS = ["unit", "cycle", *SETTINGS, *SENSORS]


def read_cycles(path: Path) -> pd.DataFrame:
    """Read a train_/test_ file, checking every line: 26 numbers, integer unit and cycle, cycles rising per unit."""
    rows: list[list[float]] = []
    last: dict[int, int] = {}
    with open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != len(COLUMNS):
                raise DataFormatError(path, lineno,
                                      f"expected {len(COLUMNS)} space-separated columns, got {len(fields)}")
            try:
                values = [float(f) for f in fields]
            except ValueError as exc:
                raise DataFormatError(path, lineno, f"expected numbers only ({exc})") from None
            if not np.all(np.isfinite(values)):
                raise DataFormatError(path, lineno, "expected finite numbers, found NaN or inf")
            unit, cycle = values[0], values[1]
            if unit != int(unit) or cycle != int(cycle) or unit < 1 or cycle < 1:
                raise DataFormatError(path, lineno, "expected positive integer unit and cycle in columns 1-2")
            if int(cycle) <= last.get(int(unit), 0):
                raise DataFormatError(path, lineno, f"cycle {int(cycle)} of unit {int(unit)} does not follow cycle "
                                      f"{last[int(unit)]}; cycles must rise within a unit")
            last[int(unit)] = int(cycle)
            rows.append(values)
    if not rows:
        raise DataFormatError(path, None, "file holds no rows")
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame[["unit", "cycle"]] = frame[["unit", "cycle"]].astype(np.int64)
    return frame


def read_rul(path: Path) -> np.ndarray:
    """Read RUL_FD00x.txt: one non-negative integer per line."""
    values = []
    with open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                raise DataFormatError(path, lineno, f"expected one number per line, got {text!r}") from None
            if value < 0 or value != int(value):
                raise DataFormatError(path, lineno, f"expected a non-negative integer RUL, got {text}")
            values.append(int(value))
    if not values:
        raise DataFormatError(path, None, "file holds no RUL values")
    return np.asarray(values, dtype=np.int64)


@dataclass
class CmapssSubset:
    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    test_rul: np.ndarray  # true RUL after the last test cycle, per test unit in ascending unit order
    fingerprint: str  # sha256 over the three files, recorded in the manifest


def load_subset(data_dir: Path, subset: str = "FD001") -> CmapssSubset:
    if subset not in SUBSETS:
        raise ValueError(f"unknown C-MAPSS subset {subset!r}; expected one of {', '.join(SUBSETS)}")
    paths = [find_data_file(data_dir, f"{kind}_{subset}.txt") for kind in ("train", "test", "RUL")]
    train, test, rul = read_cycles(paths[0]), read_cycles(paths[1]), read_rul(paths[2])
    n_units = test["unit"].nunique()
    if len(rul) != n_units:
        raise DataFormatError(paths[2], None, f"expected {n_units} RUL values (one per test unit), got {len(rul)}")
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return CmapssSubset(subset, train, test, rul, digest.hexdigest())


# --- generator ----------------------------------------------------------------------------------------------------

# Shapes of the four real subsets: operating conditions and fault modes.
_SUBSET_SHAPE = {"FD001": (1, 1), "FD002": (6, 1), "FD003": (1, 2), "FD004": (6, 2)}
_CONDITIONS = np.array([[0.0, 0.0, 100.0], [10.0, 0.25, 100.0], [20.0, 0.7, 100.0],
                        [25.0, 0.62, 60.0], [35.0, 0.84, 100.0], [42.0, 0.84, 100.0]])
# Sensors that stay flat within an operating condition in the real data (they carry no degradation signal).
_FLAT_SENSORS = {0, 4, 5, 9, 15, 17, 18}


def synthesize_subset(out_dir: Path, subset: str = "FD001", n_train: int = 60, n_test: int = 40,
                      seed: int = 0) -> None:
    """Write train/test/RUL files for `subset` in the real format: engines degrade along one or two fault modes
    under one or six operating conditions, with sensor noise, so that RUL is learnable but not trivial."""
    n_conditions, n_faults = _SUBSET_SHAPE[subset]
    rng = np.random.default_rng(seed)
    base = rng.uniform(5.0, 600.0, size=(len(_CONDITIONS), 21))
    faults = rng.normal(0.0, 1.0, size=(n_faults, 21))
    for flat in _FLAT_SENSORS:
        faults[:, flat] = 0.0
    noise_scale = 0.02 * np.abs(base[0]) / 10 + 0.01

    def engine(unit: int, life: int, keep: int) -> np.ndarray:
        fault = faults[rng.integers(n_faults)]
        onset = rng.uniform(0.3, 0.6) * life
        rows = []
        for cycle in range(1, keep + 1):
            condition = rng.integers(n_conditions)
            wear = max(0.0, (cycle - onset) / (life - onset)) ** 2
            settings = _CONDITIONS[condition] + rng.normal(0, [0.002, 0.0002, 0.0], 3)
            sensors = base[condition] * (1 + 0.01 * wear * fault) + wear * fault * noise_scale * 8
            sensors = sensors + rng.normal(0, noise_scale)
            sensors[list(_FLAT_SENSORS)] = base[condition, list(_FLAT_SENSORS)]
            rows.append([unit, cycle, *settings, *sensors])
        return np.asarray(rows)

    out_dir.mkdir(parents=True, exist_ok=True)
    fmt = ["%d", "%d", "%.4f", "%.4f", "%.1f"] + ["%.4f"] * 21
    train = np.vstack([engine(u, life := int(rng.integers(128, 300)), life) for u in range(1, n_train + 1)])
    np.savetxt(out_dir / f"train_{subset}.txt", train, fmt=fmt, delimiter=" ")
    tests, ruls = [], []
    for unit in range(1, n_test + 1):
        life = int(rng.integers(128, 300))
        keep = int(rng.integers(31, life - 5))
        tests.append(engine(unit, life, keep))
        ruls.append(life - keep)
    np.savetxt(out_dir / f"test_{subset}.txt", np.vstack(tests), fmt=fmt, delimiter=" ")
    np.savetxt(out_dir / f"RUL_{subset}.txt", np.asarray(ruls), fmt="%d")


# --- preprocessing (fitted on training data only; stored in the manifest) -----------------------------------------

def rul_targets(frame: pd.DataFrame, cap: float, final_rul: np.ndarray | None = None) -> np.ndarray:
    """Piecewise-linear RUL per row: cycles left before failure, capped at `cap` (flat while healthy).

    For training units the last cycle is the failure; for test units `final_rul` adds the RUL after the last cycle.
    """
    last = frame.groupby("unit")["cycle"].transform("max").to_numpy()
    rul = last - frame["cycle"].to_numpy()
    if final_rul is not None:
        units = np.sort(frame["unit"].unique())
        extra = dict(zip(units, final_rul, strict=True))
        rul = rul + frame["unit"].map(extra).to_numpy()
    return np.minimum(rul, cap).astype(np.float32)


_SETTING_GRID = (1.0, 0.01, 1.0)


@dataclass
class TurbofanPreprocessor:
    """Operating-condition normalisation and sensor selection, as plain data for the manifest."""

    condition_centroids: list[list[float]]
    setting_scale: list[float]
    sensors: list[str]
    mean: list[list[float]]  # per condition, per kept sensor
    std: list[list[float]]

    @classmethod
    def fit(cls, train: pd.DataFrame) -> TurbofanPreprocessor:
        settings = train[SETTINGS].to_numpy()
        scale = np.asarray(_SETTING_GRID)
        # Real operating conditions sit on a grid (altitude kft, Mach, throttle angle) with tiny sensor noise on the
        # settings; rounding to that grid finds them (one in FD001/FD003, six in FD002/FD004).
        keys = np.round(settings / scale) + 0.0  # + 0.0 folds -0.0 into 0.0
        _, group = np.unique(keys, axis=0, return_inverse=True)
        centroids = np.stack([settings[group == g].mean(axis=0) for g in range(group.max() + 1)])
        condition = _nearest(settings, centroids, scale)
        values = train[SENSORS].to_numpy()
        # A sensor is kept when it varies within some condition beyond two readings (flat ones carry no wear).
        kept = [name for j, name in enumerate(SENSORS)
                if any(len(np.unique(values[condition == c, j])) > 2 for c in range(len(centroids)))]
        cols = [SENSORS.index(s) for s in kept]
        mean = np.stack([values[condition == c][:, cols].mean(axis=0) for c in range(len(centroids))])
        std = np.stack([values[condition == c][:, cols].std(axis=0) for c in range(len(centroids))])
        return cls(centroids.tolist(), scale.tolist(), kept, mean.tolist(), np.maximum(std, 1e-6).tolist())

    @property
    def n_features(self) -> int:
        return len(self.sensors)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        return self.transform_arrays(frame[SETTINGS].to_numpy(), frame[SENSORS].to_numpy(dtype=np.float64))

    def transform_arrays(self, settings: np.ndarray, sensors: np.ndarray) -> np.ndarray:
        """The same from raw arrays (rows x 3 settings, rows x all 21 sensors), for streams without pandas."""
        condition = _nearest(np.asarray(settings, dtype=np.float64), np.asarray(self.condition_centroids),
                             np.asarray(self.setting_scale))
        values = np.asarray(sensors, dtype=np.float64)[:, [SENSORS.index(s) for s in self.sensors]]
        mean, std = np.asarray(self.mean)[condition], np.asarray(self.std)[condition]
        return ((values - mean) / std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TurbofanPreprocessor:
        return cls(**data)


def _nearest(settings: np.ndarray, centroids: np.ndarray, scale: np.ndarray) -> np.ndarray:
    distance = (((settings[:, None, :] - centroids[None]) / scale) ** 2).sum(axis=-1)
    return distance.argmin(axis=1)


def windows_per_cycle(features: np.ndarray, units: np.ndarray, window: int) -> np.ndarray:
    """One window ending at every row (cycle); the first cycles of a unit repeat its first row as padding.

    Returns an array (rows, window, features) aligned with the input rows; rows of a unit must be contiguous.
    """
    out = np.empty((len(features), window, features.shape[1]), dtype=np.float32)
    starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
    ends = np.r_[starts[1:], len(units)]
    for start, end in zip(starts, ends, strict=True):
        unit_rows = features[start:end]
        padded = np.concatenate([np.repeat(unit_rows[:1], window - 1, axis=0), unit_rows])
        view = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # (n, features, window)
        out[start:end] = view.transpose(0, 2, 1)
    return out
