"""Models that leave modelyard: `modelyard bento TASK` puts a checkpoint into BentoML's model store and builds a Bento
of the task's service, which `bentoml serve TAG` serves from any folder, as BentoML users ship models."""

import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from serving.server import stop_server, wait_ready
from tests.conftest import assert_clean_failure, free_port, post, run_cli
from training.checkpoint import verify_checkpoint
from training.processes import dies_with_parent


@pytest.fixture
def bento_home(tmp_path):
    """A BentoML home of the test's own (models/ and bentos/), and a way to run commands against it."""
    home = tmp_path / "bentoml"
    env = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}

    def bentoml_cli(*args: str, cwd=tmp_path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bentoml", *args], cwd=cwd, capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=120)

    return home, env, bentoml_cli


def build(task: str, ckpt, env) -> tuple[str, str]:
    """(model tag, Bento tag) that `modelyard bento` printed."""
    result = run_cli("bento", task, "--checkpoint", ckpt, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    words = result.stdout.split()
    return words[words.index("model") + 1], words[words.index("Bento") + 1]


def serve_tag(tag: str, env: dict, cwd):
    """`bentoml serve TAG` from a folder that holds no modelyard code, until it answers /readyz."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    process = subprocess.Popen(dies_with_parent([sys.executable, "-m", "bentoml", "serve", tag, "--host",
                                                 "127.0.0.1", "--port", str(port)]),
                               cwd=cwd, env={**os.environ, **env}, stdout=open(log, "wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}", process, timeout=120, log=log)
    return process, f"http://127.0.0.1:{port}"


def test_turbofan_and_image_checkpoints_become_models_and_bentos_served_by_tag(tmp_path, bento_home, turbofan_ckpt,
                                                                                image_ckpt):
    from serving.image_predictor import ImagePredictor
    from serving.predictor import TurbofanPredictor

    home, env, bentoml_cli = bento_home
    model, bento = build("turbofan", turbofan_ckpt, env)
    assert model.startswith("modelyard-turbofan:") and bento.startswith("turbofan_scorer:")
    assert build("turbofan", turbofan_ckpt, env) == (model, bento)  # the same checkpoint and code: the same tags
    image_model, image_bento = build("image", image_ckpt, env)

    # BentoML's own commands see them; the stored model is the checkpoint, every file verified by its sha256
    models = json.loads(bentoml_cli("models", "list", "-o", "json").stdout)
    assert {m["tag"] for m in models} == {model, image_model}
    stored = home / "models" / model.replace(":", "/")
    assert verify_checkpoint(stored).files.keys() == verify_checkpoint(turbofan_ckpt).files.keys()
    card = (stored / "README.md").read_text()  # the model card travels with the model
    assert verify_checkpoint(stored).files["model.safetensors"].sha256 in card and "modelyard serve turbofan" in card
    info = json.loads(bentoml_cli("models", "get", model, "-o", "json").stdout)
    assert info["labels"]["task"] == "turbofan" and info["metadata"]["manifest"]["task"] == "turbofan"
    assert {b["tag"] for b in json.loads(bentoml_cli("list", "-o", "json").stdout)} == {bento, image_bento}

    # what `bentoml containerize` would build from (no container builder here): the Dockerfile and the pinned
    # requirements, as constraints.txt pins them
    folder = home / "bentos" / bento.replace(":", "/")
    assert "FROM python:3.11" in (folder / "env" / "docker" / "Dockerfile").read_text()
    requirements = (folder / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert "torch==2.14.1" in requirements and any(line.startswith("bentoml==1.4.") for line in requirements)

    cycles = np.random.default_rng(0).normal(size=(40, 24)).round(3)
    predictor = TurbofanPredictor(turbofan_ckpt)  # the checkpoint folder, in this process
    window = predictor.last_window(predictor.features(cycles[:, :3], cycles[:, 3:]))
    expected = predictor.assess(predictor.score(window[None]))[0]
    process, url = serve_tag(bento, env, tmp_path)
    try:
        status, body = post(f"{url}/score", {"cycles": cycles.tolist()})
        assert status == 200 and body["alarm"] == expected["alarm"], body
        assert body["predicted_rul"] == pytest.approx(expected["predicted_rul"], abs=1e-3)
    finally:
        stop_server(process)

    png = (image_ckpt / "examples" / "cat.png").read_bytes()
    expected = ImagePredictor(image_ckpt).predict([png])[0]
    process, url = serve_tag(image_bento, env, tmp_path)
    try:
        status, body = post(f"{url}/classify", {"images": [base64.b64encode(png).decode()]})
        assert status == 200 and body[0]["top"][0]["label"] == expected[0]["label"], body
    finally:
        stop_server(process)


def test_bento_refuses_what_it_cannot_serve(tmp_path, bento_home, turbofan_ckpt):
    _, env, _ = bento_home
    assert_clean_failure(run_cli("bento", "news", "--checkpoint", turbofan_ckpt, env=env),
                         "holds a turbofan model, not a news model")
    unexported = tmp_path / "unexported"
    subprocess.run(["cp", "-r", str(turbofan_ckpt), str(unexported)], check=True)
    manifest = json.loads((unexported / "manifest.json").read_text())
    del manifest["files"]["model.onnx"]
    (unexported / "manifest.json").write_text(json.dumps(manifest))
    assert_clean_failure(run_cli("bento", "turbofan", "--checkpoint", unexported, env=env),
                         "model.onnx: missing (the Bento serves ONNX Runtime); run `modelyard export")
    assert_clean_failure(run_cli("bento", "turbofan", "--checkpoint", tmp_path / "nothing", env=env),
                         "not a modelyard checkpoint")
