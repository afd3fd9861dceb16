"""The public workflow: data synth -> train -> evaluate -> export, plus the model/objective/feature switches."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from serving.predictor import TurbofanPredictor
from tests.conftest import REPO, assert_clean_failure, free_port, real_cmapss, run_cli
from training.checkpoint import verify_checkpoint

REPORT_KEYS = {"rmse", "nasa_score", "alert_precision", "alert_recall", "alert_f1", "baseline"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    synth = run_cli("data", "synth", "turbofan", "--out", data)
    assert synth.returncode == 0 and "train_FD004.txt" in synth.stdout
    out = root / "ckpt"
    result = run_cli("train", "turbofan", "--out", out, "--data-dir", data, "--epochs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_train_prints_summary_and_writes_report_with_plots(trained):
    out, result = trained
    assert "training summary" in result.stdout and "turbofan evaluation" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert {"alert_precision", "alert_recall", "alert_f1"} <= set(report["baseline"])
    for plot in ("rul_predictions.png", "sensor_traces.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    manifest = verify_checkpoint(out)  # report and plots are hashed into the manifest
    assert {"report.json", "rul_predictions.png"} <= set(manifest.files)
    assert manifest.metrics["alert_f1"] == report["alert_f1"]
    lines = (out / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_export_onnx_matches_torch(trained):
    out, _ = trained
    result = run_cli("export", out)
    assert result.returncode == 0, result.stderr
    diff = float(result.stdout.split("max abs difference ONNX Runtime vs torch:")[1].split()[0])
    assert diff < 1e-3  # RUL in cycles (0..125): 1e-3 cycles
    assert "model.onnx" in verify_checkpoint(out).files


def test_evaluate_command_rewrites_report(trained):
    out, _ = trained
    (out / "report.json").unlink()
    (out / "rul_predictions.png").unlink()
    result = run_cli("evaluate", out)
    assert result.returncode == 0, result.stderr
    assert (out / "report.json").is_file() and "alert_f1" in result.stdout


@pytest.mark.parametrize(
    "extra",
    [["--model", "transformer", "--alert-rul", "40"], ["--objective", "reconstruction", "--window", "12"],
     ["--checkpointing"], ["--precision", "bf16"], ["--backend", "fairscale", "--checkpointing"],
     ["--backend", "torch", "--strategy", "fsdp", "--checkpointing"]],
    ids=["transformer", "reconstruction", "checkpointing", "bf16", "fairscale-checkpoint-wrapper",
         "fsdp-checkpointing"],
)
def test_training_variants(tmp_path, synthetic_cmapss, extra):
    out = tmp_path / "ckpt"
    result = run_cli("train", "turbofan", "--out", out, "--data-dir", synthetic_cmapss, "--max-steps", "8",
                     "--batch-size", "64", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["alert_f1"] <= 1.0
    manifest = verify_checkpoint(out)
    detector = manifest.preprocessing["detector"]
    assert detector["alert_rul"] == (40.0 if "--alert-rul" in extra else 30.0)
    window = 12 if "--window" in extra else 30  # the serving side reads the window from the manifest
    assert manifest.preprocessing["window"] == manifest.model["window"] == window
    assert TurbofanPredictor(out, "torch").window == window
    if "reconstruction" in extra:
        assert report["rmse"] is None and detector["kind"] == "reconstruction" and detector["alarm_when_high"]
    else:  # alarm threshold on predicted RUL, calibrated on validation engines
        assert not detector["alarm_when_high"] and 0 < detector["threshold"] < 125


def test_a_single_lstm_distils_the_ensemble(trained, tmp_path):
    """--teacher: the student trains on the teacher's engines with its normaliser and window, and the manifest says
    which weights taught it; settings that would make the two models see different inputs are refused."""
    teacher = trained[0]
    data = teacher.parent / "data"
    out = tmp_path / "student"
    common = ["train", "turbofan", "--data-dir", data, "--teacher", teacher, "--max-steps", "8", "--batch-size", "64"]
    result = run_cli(*common, "--out", out, "--members", "1", "--no-evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    student, parent = verify_checkpoint(out), verify_checkpoint(teacher)
    assert student.model["members"] == 1 and parent.model["members"] == 3
    assert student.training["teacher"]["weights_sha256"] == parent.files["model.safetensors"].sha256
    for key in ("train_units", "val_units"):
        assert student.training[key] == parent.training[key]
    assert student.preprocessing["normalizer"] == parent.preprocessing["normalizer"]
    assert_clean_failure(run_cli(*common, "--out", tmp_path / "w", "--window", "12"),
                         "the teacher reads windows of 30 cycles")
    assert_clean_failure(run_cli(*common, "--out", tmp_path / "s", "--subset", "FD002"), "trained on other data")
    assert_clean_failure(run_cli(*common, "--out", tmp_path / "r", "--objective", "reconstruction"),
                         "does not apply to --objective reconstruction")


def test_demo_trains_both_models_then_serves_the_api_and_the_app(tmp_path, tiny_encoders):
    """`make demo`'s command with one turbofan epoch and a tiny news encoder: real data when MODELYARD_DATA has it.
    It must end up serving the news API and the Gradio app, and stop both on Ctrl-C."""
    out, api_port, app_port, kafka_port, metrics_port = tmp_path / "demo", free_port(), free_port(), free_port(), \
        free_port()
    process = subprocess.Popen([sys.executable, "-m", "apps.cli", "demo", "--out", str(out), "--epochs", "1",
                                "--news-model", str(tiny_encoders["bert"]), "--api-port", str(api_port),
                                "--app-port", str(app_port), "--kafka-port", str(kafka_port),
                                "--metrics-port", str(metrics_port)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen = []
    try:
        deadline = time.monotonic() + 900
        while not any("Ctrl-C stops everything" in line for line in seen):
            assert process.poll() is None, "".join(seen) + process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "".join(seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        text = "".join(seen)
        assert "turbofan evaluation" in text and "news evaluation" in text
        assert text.count("max abs difference ONNX Runtime vs torch") == 3  # ensemble, its student, news
        request = urllib.request.Request(f"http://127.0.0.1:{api_port}/classify", headers={"Content-Type":
                                         "application/json"}, data=json.dumps({"texts": ["Team wins"]}).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())[0]["label"] in ("World", "Sports", "Business", "Sci/Tech")
        with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/", timeout=30) as response:
            assert response.status == 200
        request = urllib.request.Request(f"http://127.0.0.1:{api_port + 1}/score", headers={"Content-Type":
                                         "application/json"}, data=json.dumps({"cycles": [[1.0] * 24]}).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            assert "health" in json.loads(response.read())
        deadline = time.monotonic() + 60  # the replay is flowing through the monitor
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
                scored = [line for line in response.read().decode().splitlines()
                          if line.startswith("modelyard_monitor_messages_total")]
            if scored and float(scored[0].split()[-1]) > 0:
                break
            time.sleep(1)
        else:
            pytest.fail("the monitor scored nothing")
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    for name in ("turbofan", "turbofan-monitor", "news"):
        assert {"model.onnx", "report.json"} <= set(verify_checkpoint(out / name).files)
    student = verify_checkpoint(out / "turbofan-monitor")  # what the monitor ran: the ensemble distilled
    assert student.model["members"] == 1 and student.training["teacher"]["model"]["members"] == 3
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{api_port}/readyz", timeout=2)


@pytest.mark.slow
@pytest.mark.skipif(real_cmapss() is None, reason="needs real C-MAPSS FD001 (MODELYARD_DATA)")
def test_default_recipe_accuracy_on_real_fd001(tmp_path):
    """Guards the recipe against regressions: measured 12.7-14.1 RMSE and 0.80-0.82 alert F1 across seeds."""
    out = tmp_path / "fd001"
    result = run_cli("train", "turbofan", "--out", out, "--data-dir", real_cmapss(), timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["rmse"] < 15.5 and report["alert_f1"] > 0.75
    assert report["alert_f1"] > report["baseline"]["alert_f1"]


def test_demo_refuses_a_port_in_use_before_training(tmp_path):
    """A taken port is found in a second, not after minutes of training, and named with its option."""
    import socket

    app_port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", app_port))
        holder.listen()
        result = run_cli("demo", "--out", tmp_path / "demo", "--app-port", app_port, "--api-port", free_port(),
                         "--kafka-port", free_port(), "--metrics-port", free_port(), timeout=120)
    assert result.returncode == 1
    assert f"port {app_port} (--app-port) already in use" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "demo").exists()
