"""The news API over real HTTP (a `bentoml serve` process), the shared predictor runtimes, and the Gradio tab in a
real headless Chromium."""

import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from serving.predictor import NewsPredictor, load_predictor
from serving.server import start_server, stop_server, wait_ready
from tests.conftest import (
    REPO,
    assert_api_honours_its_document,
    assert_clean_failure,
    free_port,
    post,
    run_cli,
    running_app,
)
from training.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, news_dir, tiny_encoders) -> Path:
    out = tmp_path_factory.mktemp("served") / "news"
    result = run_cli("train", "news", "--out", out, "--data-dir", news_dir, "--model", tiny_encoders["bert"],
                     "--epochs", "2", "--lr", "3e-3", "--batch-size", "16", "--max-length", "48", "--no-evaluate")
    assert result.returncode == 0, result.stderr[-2000:]
    assert run_cli("export", out).returncode == 0
    return out


@pytest.fixture(scope="module")
def api(ckpt, tmp_path_factory):
    port, log = free_port(), tmp_path_factory.mktemp("logs") / "serve.log"
    process = start_server("news", ckpt, port, "onnx", options={"max_texts": 8, "max_chars": 2000}, log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log=log)
        yield url
    finally:
        stop_server(process)


def test_classify_returns_label_index_and_probabilities(api):
    status, body = post(f"{api}/classify", {"texts": ["Shares of the bank rose after profit beat forecasts.",
                                                      "The coach praised his team after the league victory."]})
    assert status == 200, body
    assert len(body) == 2
    for item in body:
        assert set(item) == {"label", "index", "probabilities", "truncated"}
        assert list(item["probabilities"]) == ["World", "Sports", "Business", "Sci/Tech"]
        assert sum(item["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert item["label"] == list(item["probabilities"])[item["index"]]
        assert item["truncated"] is False


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "Field required"),
        ({"texts": []}, "at least 1 item"),
        ({"texts": [42]}, "valid string"),
        ({"texts": ["   "]}, "should match pattern"),
        ({"texts": ["word"] * 9}, "at most 8 items"),
        ({"texts": ["x" * 2001]}, "at most 2000 characters"),
        ("a string", "should be an object"),
    ],
)
def test_bad_requests_get_400_with_a_reason_and_the_server_lives_on(api, body, fragment):
    status, text = post(f"{api}/classify", body)
    assert status == 400 and fragment in text, text
    assert post(f"{api}/classify", {"texts": ["still serving"]})[0] == 200


def test_malformed_json_is_a_client_error(api):
    status, _ = post(f"{api}/classify", None, raw=b'{"texts": [')
    assert 400 <= status < 500


def test_over_long_text_is_truncated_and_flagged(api):
    status, body = post(f"{api}/classify", {"texts": ["market " * 250, "short text"]})
    assert status == 200 and [item["truncated"] for item in body] == [True, False]


def batch_sizes(api: str) -> tuple[float, float]:
    """From BentoML's histogram of the batches its adaptive batcher formed: how many, and how many held one input."""
    with urllib.request.urlopen(f"{api}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    batches = sum(float(line.rsplit(" ", 1)[1]) for line in lines
                  if line.startswith("bentoml_service_adaptive_batch_size_count{"))
    of_one = sum(float(line.rsplit(" ", 1)[1]) for line in lines
                 if line.startswith("bentoml_service_adaptive_batch_size_bucket{") and 'le="1.0"' in line)
    return batches, of_one


def test_concurrent_requests_are_batched_and_answered_in_order(api):
    texts = [f"request {i}: the team won the match" if i % 2 else f"request {i}: shares fell" for i in range(24)]
    seen_before = batch_sizes(api)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda t: post(f"{api}/classify", {"texts": [t]}), texts))
    assert all(status == 200 for status, _ in answers)
    singles = [post(f"{api}/classify", {"texts": [t]})[1][0] for t in texts[:4]]
    for (_, body), single in zip(answers[:4], singles, strict=True):
        assert body[0]["probabilities"] == pytest.approx(single["probabilities"], abs=1e-4)
    batches, of_one = (after - before for after, before in zip(batch_sizes(api), seen_before, strict=True))
    assert batches > of_one, "no two concurrent requests were answered in one batch"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/docs.json"])
def test_operational_endpoints(api, path):
    with urllib.request.urlopen(f"{api}{path}", timeout=10) as response:
        assert response.status == 200
        if path == "/docs.json":
            assert "/classify" in json.loads(response.read())["paths"]


def test_the_api_answers_what_its_openapi_document_declares(api):
    assert_api_honours_its_document(api)  # every status and body as documented, refusals included; no 5xx


def test_onnx_and_torch_runtimes_agree(ckpt):
    texts = ["Oil prices climbed as supply fears grew.", "A new chip doubles battery life of phones."]
    onnx, torch_ = NewsPredictor(ckpt, "onnx"), load_predictor(ckpt, "torch")
    for a, b in zip(onnx.predict(texts), torch_.predict(texts), strict=True):
        assert a["index"] == b["index"]
        assert np.allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-5)


def test_predictor_and_serve_refuse_a_tampered_checkpoint(ckpt, tmp_path):
    bad = tmp_path / "tampered"
    shutil.copytree(ckpt, bad)
    with open(bad / "tokenizer" / "vocab.txt", "a") as handle:
        handle.write("extra\n")
    with pytest.raises(CheckpointError, match="vocab.txt"):
        NewsPredictor(bad)
    assert_clean_failure(run_cli("serve", "news", "--checkpoint", bad, "--port", str(free_port()), timeout=60),
                         "vocab.txt")


def test_serve_cli_starts_prints_urls_and_stops_on_sigterm(ckpt):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "news", "--checkpoint", str(ckpt),
                                "--port", str(port), "--runtime", "torch"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    # The CLI prints the URLs once the service answers; wait for that line, not for the port: the service can
    # answer before the CLI has printed (a SIGTERM in between failed CI once).
    url_line, printed = f"POST http://127.0.0.1:{port}/classify", ""
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            printed += line.replace("\n", " ")  # the console wraps long lines
            if url_line in printed:
                break
        assert url_line in printed, f"modelyard serve never printed its URL: {printed}"
        assert post(f"http://127.0.0.1:{port}/classify", {"texts": ["hello"]})[0] == 200
    finally:
        watchdog.cancel()
        process.terminate()
        _, err = process.communicate(timeout=60)
    assert "Traceback" not in err
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)


@pytest.mark.parametrize("source", ["checkpoint", "api"])
def test_gradio_news_tab_in_a_headless_browser(ckpt, api, browser, tmp_path, source):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    args = ["--news-checkpoint", ckpt] if source == "checkpoint" else ["--api-url", api]
    with running_app(tmp_path, *args) as url:
        wait = WebDriverWait(browser, 90, poll_frequency=0.5)
        browser.get(url)
        # Click the first example, then Classify: what a visitor would do.
        example = wait.until(lambda d: next((e for e in d.find_elements(
            By.XPATH, "//*[contains(text(), 'Stocks climbed on Wall')]") if e.is_displayed()), None))
        example.click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#news-text textarea").get_attribute("value"))
        browser.find_element(By.CSS_SELECTOR, "#news-submit").click()
        topic = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#news-topic textarea").get_attribute("value"))
        expected = NewsPredictor(ckpt).predict([browser.find_element(By.CSS_SELECTOR, "#news-text textarea")
                                                .get_attribute("value")])[0]["label"]
        assert topic == expected
        bars = browser.find_element(By.CSS_SELECTOR, "#news-probabilities").text
        assert all(label in bars for label in ("World", "Sports", "Business", "Sci/Tech"))
        browser.save_screenshot(str(tmp_path / "news-tab.png"))


def test_bentomls_client_lists_and_calls_the_route(api):
    import bentoml

    with bentoml.SyncHTTPClient(api) as client:
        assert list(client.endpoints) == ["classify"]
        answer = client.classify(texts=["Stocks rallied as the central bank held rates"])
    assert answer == post(f"{api}/classify", {"texts": ["Stocks rallied as the central bank held rates"]})[1]
