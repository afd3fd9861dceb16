"""Shared fixtures: C-MAPSS data (real FD001 when MODELYARD_DATA has it, generated otherwise) and a CLI runner."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
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


def wait_for(condition, what: str, timeout: float = 60.0, every: float = 0.1) -> None:
    """Wait until condition() is true (a state the test needs, never a guess at how long the machine takes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(every)


def free_port(count: int = 2) -> int:
    """A free port with the `count - 1` ports after it free too (the demo gives each task's API the next port),
    drawn below the kernel's ephemeral range: a port bind(0) gives can be taken by any outgoing connection before
    the server under test binds it, which failed CI once."""
    import random
    import socket

    port_range = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(port_range.read_text().split()[0]) if port_range.exists() else 32768
    for _ in range(1000):
        port = random.randrange(max(1024, low - 12000), low - count, 2)
        block = set(range(port, port + count))
        if block & _HANDED_OUT:
            continue
        try:
            for candidate in block:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        _HANDED_OUT.update(block)
        return port
    raise RuntimeError("no free port block below the ephemeral range")


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    """The pids of `pids` still running (zombies count as gone)."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.add(pid)
    return running


def sigkill_leaves_no_children(process: subprocess.Popen, what: str) -> None:
    """SIGKILL `process` (no chance to clean up) and check that every process below it goes by itself."""
    children = descendants(process.pid)
    process.kill()
    process.wait(30)
    assert children, f"no {what} ran below the command"
    assert not wait_gone(children), f"{what} outlived its SIGKILLed launcher"


def wait_gone(pids: set[int], timeout: float = 30.0) -> set[int]:
    """Wait until none of `pids` runs; returns those still running at the timeout."""
    import time

    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(pids)


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `modelyard ARGS` as a user would, in a fresh interpreter; `env` entries set to None are unset."""
    merged = {name: value for name, value in {**os.environ, **(env or {})}.items() if value is not None}
    return subprocess.run([sys.executable, "-m", "apps.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=merged)


def run_cli_here(*args: object) -> subprocess.CompletedProcess:
    """`modelyard ARGS` in this interpreter (click's test runner): the same command, exit code, stdout and stderr as
    run_cli without a fresh interpreter's seconds of imports, for commands refused before any training. An uncaught
    exception shows as the interpreter would show it (a traceback on stderr); the environment variables a command sets
    (a one-process run's torch.distributed ones) are taken back."""
    import traceback

    from click.testing import CliRunner

    from apps.cli import cli

    environ = dict(os.environ)
    try:
        result = CliRunner().invoke(cli(), [str(a) for a in args], prog_name="modelyard")
    finally:
        os.environ.clear()
        os.environ.update(environ)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)


# A GPT-2 from scratch takes $MODELYARD_DATA/gpt2_tokenizer when there is one: with its 50,257 tokens the tiny model
# on generated text trains 7x slower (CI: 105 s where 14 s do) and learns less, so those runs leave it out.
LEARNED_BPE = {"MODELYARD_DATA": None}


def assert_resumes_from_per_rank_optimizer_files(*train_args: object, out: Path) -> None:
    """A tensor-parallel run of one epoch keeps one optimizer file per rank (no full one), and `--resume` with
    `--epochs 2` carries on from them: the log holds both epochs and twice the first one's steps."""
    import json

    from training.checkpoint import verify_checkpoint

    first = run_cli(*train_args, "--out", out, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    state = json.loads((out / "state" / "latest.json").read_text())
    assert {"optimizer-rank0.pt", "optimizer-rank1.pt"} <= set(state["files"]) and "optimizer.pt" not in state["files"]
    steps_one_epoch = verify_checkpoint(out).training["steps"]
    resumed = run_cli(*train_args, "--out", out, "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and log[-1]["step"] == 2 * steps_one_epoch


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


def assert_api_honours_its_document(url: str, max_examples: int = 60, exclude_checks: tuple[str, ...] = (),
                                    allowed_warning: str | None = None) -> None:
    """schemathesis against the service's own OpenAPI document (/docs.json), valid and invalid inputs (coverage and
    fuzzing phases, every check but `exclude_checks`): no 5xx, and every status code and body as declared. A
    warning fails too, unless it is the one `allowed_warning` names."""
    command = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/docs.json", "--url", url,
               "--checks", "all", "--phases", "coverage,fuzzing", "--max-examples", str(max_examples),
               "--seed", "1", "--generation-database", "none", "--no-color", "--request-timeout", "60",
               *(["--exclude-checks", ",".join(exclude_checks)] if exclude_checks else [])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    failures = result.stdout[result.stdout.find("FAILURES"):]  # what failed, before any long request body
    assert result.returncode == 0, failures[:4000] + "\n...\n" + result.stdout[-2000:] + result.stderr[-2000:]
    if "No issues found" in result.stdout:
        return
    warnings = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("⚠️")]
    assert allowed_warning and warnings and all(allowed_warning in w for w in warnings), result.stdout[-3000:]


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """Generated CIFAR-10 in the binary format (the real JPEGs are kept for the slow accuracy runs)."""
    from training.data.cifar10 import synthesize_cifar

    out = tmp_path_factory.mktemp("cifar-synth")
    synthesize_cifar(out, n_train=1200, n_test=300, seed=4)
    return out


TINY_IMAGE = ["--width", "8", "--batch-size", "64"]  # a FastNet small enough for a few seconds of training


@pytest.fixture(scope="session")
def image_ckpt(tmp_path_factory, cifar_dir) -> Path:
    """A tiny FastNet trained briefly on generated CIFAR-10, evaluated and exported (serving and app tests)."""
    out = tmp_path_factory.mktemp("image-served") / "ckpt"
    result = run_cli("train", "image", "--out", out, "--data-dir", cifar_dir, "--epochs", "4", *TINY_IMAGE)
    assert result.returncode == 0, result.stderr[-2000:]
    assert run_cli("export", out).returncode == 0
    return out


@contextlib.contextmanager
def running_app(tmp_path: Path, *args: object, timeout: float = 90.0):
    """`modelyard app ARGS` on a free port until the block ends; yields its URL once it answers (its log:
    tmp_path/app.log)."""
    import time
    import urllib.request

    port, log = free_port(), tmp_path / "app.log"
    with open(log, "w") as errors:
        app = subprocess.Popen([sys.executable, "-m", "apps.cli", "app", *map(str, args), "--port", str(port)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=errors)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert app.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        app.terminate()
        app.wait(30)


def real_m5() -> Path | None:
    root = os.environ.get("MODELYARD_DATA")
    folder = Path(root) / "m5" if root else None
    return folder if folder and (folder / "subset_zama-github_SPOT" / "sales_train_validation.csv").is_file() else None


@pytest.fixture(scope="session")
def m5_dir(tmp_path_factory) -> Path:
    """The 10 real M5 series when MODELYARD_DATA has them (their tab-separated price export converted to the
    published comma layout here, in the fixture: the reader only reads the real format), generated data otherwise."""
    from training.data.m5_synthetic import stage_real_subset, synthesize_m5

    out = tmp_path_factory.mktemp("m5")
    if real_m5() is not None:
        return stage_real_subset(real_m5(), out)
    synthesize_m5(out, series=30, seed=3)
    return out


SALES_BASELINES = "seasonal_naive,ets,lightgbm,xgboost,prophet"  # arima: a minute on the real series; see slow test


@pytest.fixture(scope="session")
def sales_ckpt(tmp_path_factory, m5_dir) -> Path:
    """An LSTM trained briefly on M5 data, evaluated against the baselines and exported (serving and app tests)."""
    out = tmp_path_factory.mktemp("sales-served") / "ckpt"
    result = run_cli("train", "sales", "--out", out, "--data-dir", m5_dir, "--epochs", "2", "--hidden", "16",
                     "--origin-stride", "3", "--baselines", SALES_BASELINES)
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_cli("export", out).returncode == 0
    return out


@pytest.fixture(scope="session")
def wikitext_dir(tmp_path_factory) -> Path:
    """Generated WikiText-format splits (train, valid, test): small enough for a tiny model to learn in seconds."""
    from training.data.wikitext import synthesize_wikitext

    out = tmp_path_factory.mktemp("wikitext")
    synthesize_wikitext(out, seed=5)
    return out


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, wikitext_dir) -> Path:
    from tests.tiny_models import make_tiny_causal_lm
    from training.data.wikitext import read_split

    corpus = read_split(wikitext_dir / "wiki.train.tokens", "train").articles
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm") / "gpt2-tiny", corpus)


@pytest.fixture(scope="session")
def chat_ckpt(tmp_path_factory, wikitext_dir) -> Path:
    """A tiny llama with SmolLM2's tokenizer and chat template, fine-tuned for a few steps and exported (the OpenAI
    API's tests, over the onnx runtime)."""
    from tests.tiny_models import make_tiny_chat_llama

    base = make_tiny_chat_llama(tmp_path_factory.mktemp("tiny-llama") / "llama-tiny")
    out = tmp_path_factory.mktemp("chat-served") / "ckpt"
    result = run_cli("train", "generator", "--out", out, "--data-dir", wikitext_dir, "--model", base,
                     "--block-size", "64", "--max-steps", "3", "--no-evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("export", out, "--weights", "fp32")  # served by the onnx runtime, as exact as torch
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def generator_ckpt(tmp_path_factory, wikitext_dir) -> Path:
    """A tiny GPT-2 trained from scratch on generated WikiText (serving and app tests)."""
    out = tmp_path_factory.mktemp("generator-served") / "ckpt"
    result = run_cli("train", "generator", "--out", out, "--data-dir", wikitext_dir, "--size", "tiny",
                     "--block-size", "64", "--epochs", "6", env=LEARNED_BPE)
    assert result.returncode == 0, result.stderr[-3000:]
    return out
