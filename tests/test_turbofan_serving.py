"""The turbofan scoring API over real HTTP: the same numbers as the offline predictor, and 400s for bad input."""


import numpy as np
import pytest

from serving.predictor import TurbofanPredictor
from serving.server import start_server, stop_server, wait_ready
from streaming.replay import load_replay
from tests.conftest import REPO, assert_api_honours_its_document, free_port, post, sigkill_leaves_no_children
from training.data.cmapss import COLUMNS


@pytest.fixture(scope="module")
def api(turbofan_ckpt, tmp_path_factory):
    port, log = free_port(), tmp_path_factory.mktemp("logs") / "serve.log"
    process = start_server("turbofan", turbofan_ckpt, port, log=log)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log=log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


def test_score_matches_the_offline_predictor_for_histories_and_windows(api, turbofan_ckpt, synthetic_cmapss):
    engine = load_replay(synthetic_cmapss, "FD001", "train", engines=[2]).sort_values("cycle")
    rows = engine[COLUMNS].to_numpy()[:, 2:]  # settings + sensors, per cycle
    predictor = TurbofanPredictor(turbofan_ckpt)
    for history in (rows[:5], rows[:60], rows):  # shorter than a window, a window and more, the whole life
        status, body = post(f"{api}/score", {"cycles": history.tolist()})
        assert status == 200, body
        features = predictor.features(history[:, :3], history[:, 3:])
        expected = predictor.assess(predictor.score(predictor.last_window(features)[None]))[0]
        assert body["predicted_rul"] == pytest.approx(expected["predicted_rul"], abs=1e-3)
        assert body["alarm"] == expected["alarm"] and body["health"] == pytest.approx(expected["health"], abs=1e-3)
        assert body["cycles_used"] == min(len(history), predictor.window)
    assert post(f"{api}/score", {"cycles": rows.tolist()})[1]["alarm"]  # an engine at failure is in alarm


@pytest.mark.parametrize(
    ("body", "raw", "fragment"),
    [
        ({"cycles": []}, None, "at least 1 item"),
        ({"cycles": [[1.0] * 23]}, None, "at least 24 items"),
        ({"cycles": [["a"] * 24]}, None, "valid number"),
        ({}, None, "Field required"),
        (None, b'{"cycles": [[NaN' + b", 1.0" * 23 + b"]]}", "finite number"),
    ],
)
def test_bad_input_gets_400_and_the_server_lives_on(api, body, raw, fragment):
    status, text = post(f"{api}/score", body, raw)
    assert status == 400 and fragment in str(text), text
    assert post(f"{api}/score", {"cycles": [list(np.ones(24))]})[0] == 200


def test_the_api_answers_what_its_openapi_document_declares(api):
    """Fuzzed from its own document: 400 bodies carry pydantic's error list as declared, optional fields are
    declared nullable, an undeclared Content-Type gets a declared 415 rather than a 500."""
    assert_api_honours_its_document(api)


def test_a_sigkilled_serve_command_takes_its_bentoml_processes_with_it(turbofan_ckpt):
    import subprocess
    import sys

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "turbofan", "--checkpoint",
                                str(turbofan_ckpt), "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    printed = ""
    for line in process.stdout:
        printed += line
        if "API ready" in printed:
            break
    assert "API ready" in printed, printed
    sigkill_leaves_no_children(process, "BentoML's processes")


def test_bentomls_client_lists_and_calls_the_route(api):
    import bentoml

    cycles = np.random.default_rng(1).normal(size=(35, 24)).round(3).tolist()
    with bentoml.SyncHTTPClient(api) as client:
        assert list(client.endpoints) == ["score"]
        assert client.score(cycles=cycles) == post(f"{api}/score", {"cycles": cycles})[1]
