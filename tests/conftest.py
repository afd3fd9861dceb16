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


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.fixture(scope="session")
def news_dir(tmp_path_factory) -> Path:
    """Generated AG News-format train.csv/test.csv (real AG News has no train.csv here; tests stay fast)."""
    from training.data.ag_news import synthesize_news

    out = tmp_path_factory.mktemp("news-synth")
    synthesize_news(out, n_train=400, n_test=120, seed=2)
    return out


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory, news_dir) -> dict[str, Path]:
    """Tiny random BERT, DistilBERT and RoBERTa folders (see tests/tiny_models.py)."""
    from tests.tiny_models import make_tiny_encoder
    from training.data.ag_news import read_news_csv

    corpus = read_news_csv(news_dir / "train.csv").texts
    root = tmp_path_factory.mktemp("tiny-encoders")
    return {arch: make_tiny_encoder(root / arch, arch, corpus) for arch in ("bert", "distilbert", "roberta")}
