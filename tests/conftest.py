"""Shared fixtures: C-MAPSS data (real FD001 when MODELYARD_DATA has it, generated otherwise) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_cmapss() -> Path | None:
    root = os.environ.get("MODELYARD_DATA")
    if root and list((Path(root) / "cmapss").glob("train_FD001.txt*")):
        return Path(root) / "cmapss"
    return None


@pytest.fixture(scope="session")
def synthetic_cmapss(tmp_path_factory) -> Path:
    from training.data.cmapss import synthesize_subset

    out = tmp_path_factory.mktemp("cmapss-synth")
    synthesize_subset(out, "FD001", n_train=30, n_test=20, seed=1)
    return out


@pytest.fixture(scope="session")
def cmapss_dir(synthetic_cmapss) -> Path:
    """Real FD001 when available (tests then exercise the real format), generated data otherwise."""
    return real_cmapss() or synthetic_cmapss


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `modelyard ARGS` as a user would, in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "apps.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def assert_clean_failure(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A refusal: non-zero exit, the reason on stderr, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
