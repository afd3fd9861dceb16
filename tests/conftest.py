"""Shared fixtures: C-MAPSS data (real FD001 when MODELYARD_DATA has it, generated otherwise) and a CLI runner."""

from __future__ import annotations

import os
import shutil
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


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port with its next one free too (the demo serves turbofan on --api-port + 1), drawn below the
    kernel's ephemeral range: a port bind(0) gives can be taken by any outgoing connection before the server under
    test binds it, which failed CI once."""
    import random
    import socket

    port_range = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(port_range.read_text().split()[0]) if port_range.exists() else 32768
    for _ in range(1000):
        port = random.randrange(max(1024, low - 12000), low - 1, 2)
        if {port, port + 1} & _HANDED_OUT:
            continue
        try:
            for candidate in (port, port + 1):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        _HANDED_OUT.update({port, port + 1})
        return port
    raise RuntimeError("no free port pair below the ephemeral range")


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


@pytest.fixture(scope="session")
def turbofan_ckpt(tmp_path_factory, synthetic_cmapss) -> Path:
    """A turbofan LSTM trained briefly on generated FD001, exported to ONNX (for serving and streaming tests)."""
    out = tmp_path_factory.mktemp("turbofan-served") / "ckpt"
    result = run_cli("train", "turbofan", "--out", out, "--data-dir", synthetic_cmapss, "--epochs", "3",
                     "--no-evaluate")
    assert result.returncode == 0, result.stderr[-2000:]
    assert run_cli("export", out).returncode == 0
    return out


def chromium() -> tuple[str, str] | None:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture
def browser(tmp_path):
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian chromium + chromium-driver (.ci/run installs them)")
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium()[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):  # pytest prunes it, unlike mkdtemp
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromium()[1]), options=options)
    yield driver
    driver.quit()


def post(url: str, body: object = None, raw: bytes | None = None) -> tuple[int, object]:
    """POST JSON (or raw bytes); (status, parsed JSON) on success, (status, body text) on an HTTP error."""
    import json
    import urllib.error
    import urllib.request

    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
