"""The public workflow: data synth -> train -> evaluate -> export, plus the model/objective/feature switches."""

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from serving.predictor import TurbofanPredictor
from tests.conftest import (
    REPO,
    assert_clean_failure,
    descendants,
    free_port,
    post,
    real_cmapss,
    run_cli,
    run_cli_here,
    sigkill_leaves_no_children,
)
from training.checkpoint import verify_checkpoint
from training.engine.backends import DEFAULT_STRATEGY

REPORT_KEYS = {"rmse", "nasa_score", "alert_precision", "alert_recall", "alert_f1", "baseline"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    synth = run_cli_here("data", "synth", "turbofan", "--out", data)
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
    reported = float(result.stdout.split("max abs difference ONNX Runtime vs torch:")[1].split()[0])
    assert "model.onnx" in verify_checkpoint(out).files
    # measured here, not taken from the command's word: the exported graph against the checkpoint's torch model
    import numpy as np
    import onnxruntime as ort
    import torch

    from training.models import load_model

    model = load_model(out)[1].eval()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    windows = torch.randn(5, *feed.shape[1:])  # another batch size than the export traced
    with torch.no_grad():
        expected = model(windows).numpy()
    diff = float(np.abs(session.run(None, {feed.name: windows.numpy()})[0] - expected).max())
    assert diff < 1e-3 and reported < 1e-3  # RUL in cycles (0..125): 1e-3 cycles
    # a further format is what the task's spec offers (the generator's hf), refused with the choices for the rest
    assert_clean_failure(run_cli_here("export", out, "--format", "hf"),
                         "a turbofan checkpoint exports to onnx, not hf")


def test_evaluate_command_rewrites_report(trained):
    out, _ = trained
    (out / "report.json").unlink()
    (out / "rul_predictions.png").unlink()
    result = run_cli("evaluate", out)
    assert result.returncode == 0, result.stderr
    assert (out / "report.json").is_file() and "alert_f1" in result.stdout
    # an evaluation option another task declares (sales' rolling origin) is refused in one line
    assert_clean_failure(run_cli_here("evaluate", out, "--cv", "2"),
                         "--cv: a turbofan checkpoint's evaluation has no such option")


def test_evaluate_on_another_data_folder(trained, tmp_path):
    """`evaluate CKPT --data-dir DIR` scores the model on DIR's test engines (here 15 generated ones, not the 40 it
    was trained beside); without it, on the training run's folder again."""
    from training.data.cmapss import synthesize_subset

    out, _ = trained
    synthesize_subset(tmp_path, "FD001", n_test=15, seed=11)
    result = run_cli("evaluate", out, "--data-dir", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "report.json").read_text())["test_engines"] == 15
    assert run_cli("evaluate", out).returncode == 0
    assert json.loads((out / "report.json").read_text())["test_engines"] == 40


@pytest.mark.parametrize(("task", "tiny"), [
    ("news", ["--max-length", "32", "--batch-size", "8"]),
    ("image", ["--width", "8", "--batch-size", "32"]),
    ("sales", ["--hidden", "8", "--context", "56", "--origin-stride", "28"]),
    ("generator", ["--size", "tiny", "--block-size", "32", "--batch-size", "8"]),
])
def test_data_synth_writes_files_that_train_reads(tmp_path, task, tiny, tiny_encoders):
    """`modelyard data synth TASK` writes the task's real file format: the training command reads it as it is."""
    data, out = tmp_path / "data", tmp_path / "ckpt"
    synth = run_cli_here("data", "synth", task, "--out", data)
    assert synth.returncode == 0, synth.stderr
    written = [path for path in data.rglob("*") if path.is_file()]
    assert "wrote" in synth.stdout and written and all(path.stat().st_size > 0 for path in written), synth.stdout
    model = ["--model", tiny_encoders["bert"]] if task == "news" else []
    result = run_cli("train", task, "--out", out, "--data-dir", data, "--max-steps", "2", "--no-evaluate", *model,
                     *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify_checkpoint(out).training["data_dir"] == str(data)


def test_a_time_limit_is_kept_and_the_schedule_still_ends_at_its_floor(tmp_path, synthetic_cmapss):
    """--time-limit (every demo run has one): the steps are planned to end within it, validation included, and the
    cosine decay is planned to that end (it reaches its floor, a tenth of the peak) instead of being cut short."""
    out, limit, peak = tmp_path / "ckpt", 8.0, 0.002
    result = run_cli("train", "turbofan", "--out", out, "--data-dir", synthetic_cmapss, "--epochs", "10000",
                     "--time-limit", str(limit), "--batch-size", "64", "--lr", str(peak))
    assert result.returncode == 0, result.stderr[-3000:]
    ran = verify_checkpoint(out).training
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert ran["epochs_run"] == len(history) < 10000 and not ran["stopped_early"]
    spent = sum(record["epoch_seconds"] for record in history)  # training and validation, every epoch
    assert limit * 0.7 <= spent <= limit * 1.15 + 0.5, spent  # planned at the pace so far: stated tolerance 15%
    assert history[-1]["lr"] == pytest.approx(0.1 * peak, rel=0.02)  # the last step is at the schedule's floor
    assert max(record["lr"] for record in history) > 0.5 * peak  # and it started from the peak


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
    manifest = verify_checkpoint(out)
    assert REPORT_KEYS <= set(report) and manifest.metrics["alert_f1"] == report["alert_f1"]
    # the run was the one asked for: each switch is in the manifest's record of it, the rest at their defaults
    asked = dict(zip(extra[::2], extra[1::2], strict=False))
    ran = manifest.training
    backend = asked.get("--backend", "torch")
    assert (ran["backend"], ran["strategy"]) == (backend, asked.get("--strategy", DEFAULT_STRATEGY[backend]))
    assert ran["precision"] == asked.get("--precision", "fp32") and ran["checkpointing"] == ("--checkpointing" in extra)
    assert manifest.model["arch"] == {"transformer": "transformer", "reconstruction": "lstm_autoencoder"}.get(
        asked.get("--model", asked.get("--objective")), "lstm")
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
    assert_clean_failure(run_cli_here(*common, "--out", tmp_path / "w", "--window", "12"),
                         "the teacher reads windows of 30 cycles")
    assert_clean_failure(run_cli_here(*common, "--out", tmp_path / "s", "--subset", "FD002"), "trained on other data")
    assert_clean_failure(run_cli_here(*common, "--out", tmp_path / "r", "--objective", "reconstruction"),
                         "does not apply to --objective reconstruction")
    other = tmp_path / "other-task"  # refused from its manifest, before its weights are read
    shutil.copytree(teacher, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "task": "news"}))
    assert_clean_failure(run_cli_here(*[other if arg == teacher else arg for arg in common], "--out", tmp_path / "o"),
                         "a news rul checkpoint; the teacher must be a turbofan RUL model")


def start_demo(out, ports: dict, *extra: str) -> tuple[subprocess.Popen, queue.Queue]:
    process = subprocess.Popen([sys.executable, "-m", "apps.cli", "demo", "--out", str(out), "--api-port",
                                str(ports["api"]), "--app-port", str(ports["app"]), "--kafka-port", str(ports["kafka"]),
                                "--metrics-port", str(ports["metrics"]), *extra], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    return process, lines


def wait_serving(process: subprocess.Popen, lines: queue.Queue, timeout: float) -> str:
    """The demo's output up to its 'Ctrl-C stops everything' line."""
    seen, start = [], time.monotonic()
    while not any("Ctrl-C stops everything" in line for line in seen):
        assert process.poll() is None, "".join(seen) + process.stderr.read()[-3000:]
        assert time.monotonic() - start < timeout, "".join(seen)
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            pass
    return "".join(seen)


def check_demo_services(ports: dict) -> None:
    api = ports["api"]
    status, body = post(f"http://127.0.0.1:{api}/score", {"cycles": [[1.0] * 24]})  # turbofan: the first task
    assert status == 200 and "health" in body, body
    status, body = post(f"http://127.0.0.1:{api + 1}/classify", {"texts": ["Team wins"]})
    assert status == 200 and body[0]["label"] in ("World", "Sports", "Business", "Sci/Tech"), body
    import base64

    from training.data.cifar10 import CLASSES

    png = base64.b64encode((ports["out"] / "image" / "examples" / "cat.png").read_bytes()).decode()
    status, body = post(f"http://127.0.0.1:{api + 2}/classify", {"images": [png]})
    assert status == 200 and body[0]["top"][0]["label"] in CLASSES, body
    series = (ports["out"] / "sales" / "series.csv").read_text().splitlines()[1].split(",")[0]
    status, body = post(f"http://127.0.0.1:{api + 3}/forecast", {"series_id": series, "horizon": 28})
    assert status == 200 and len(body["forecast"]) == 28, body
    status, body = post(f"http://127.0.0.1:{api + 4}/generate", {"prompt": "The castle was", "max_new_tokens": 8})
    assert status == 200 and body["generated_tokens"] >= 1, body
    status, body = post(f"http://127.0.0.1:{api + 4}/v1/completions", {"model": "generator", "prompt": "The castle",
                                                                      "max_tokens": 4})
    assert status == 200 and body["object"] == "text_completion" and body["usage"]["completion_tokens"] >= 1, body
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['app']}/", timeout=30) as response:
        assert response.status == 200
    deadline = time.monotonic() + 60  # the replay is flowing through the monitor
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10) as response:
            scored = [line for line in response.read().decode().splitlines()
                      if line.startswith("modelyard_monitor_messages_total")]
        if scored and float(scored[0].split()[-1]) > 0:
            return
        time.sleep(1)
    pytest.fail("the monitor scored nothing")


@pytest.mark.timeout(1500)  # the global 600 s would cut its own longer waits short
def test_demo_trains_serves_dies_with_its_children_and_comes_back_reusing_its_models(tmp_path, tiny_encoders,
                                                                                     tiny_lm):
    """`make demo`'s command with one epoch per run, a tiny news encoder and a tiny causal LM in SmolLM2's place (real
    data when MODELYARD_DATA has it):
    it trains, serves every API, the monitor and the app; SIGKILLed, it leaves no process behind; started again it
    reuses every checkpoint (same code, data and settings) and serves within two minutes; Ctrl-C stops it."""
    out = tmp_path / "demo"
    ports = {"api": free_port(6), "app": free_port(), "kafka": free_port(), "metrics": free_port(), "out": out}
    args = ("--epochs", "1", "--model", f"news={tiny_encoders['bert']}", "--model", f"generator={tiny_lm}",
            "--set", "image.width=8", "--set",
            "image.train_images=2000", "--set", "sales.origin_stride=3", "--set", "sales.baselines=seasonal_naive,ets")
    process, lines = start_demo(out, ports, *args)
    try:
        text = wait_serving(process, lines, timeout=900)
        for task in ("turbofan", "news", "image", "sales", "generator"):
            assert f"{task} evaluation" in text
        # the ensemble, its student, news, image, sales, the generator's decoder
        assert text.count("max abs difference ONNX Runtime vs torch") == 6
        # the summary: each headline metric beside its URL
        for label in ("test RMSE (cycles)", "test accuracy", "test WRMSSE", "test perplexity"):
            assert label in text
        assert f"POST http://127.0.0.1:{ports['api'] + 1}/classify" in text
        assert "stream monitor" in text and f"Kafka broker (embedded):  127.0.0.1:{ports['kafka']}" in text  # live
        check_demo_services(ports)
        assert len(descendants(process.pid)) >= 3, "expected the broker and the BentoML servers below the demo"
        sigkill_leaves_no_children(process, "the demo's services")
    finally:
        process.kill()
    for name in ("turbofan", "turbofan-monitor", "news", "image", "sales"):
        assert {"model.onnx", "report.json"} <= set(verify_checkpoint(out / name).files)
    assert {"decoder.onnx", "report.json"} <= set(verify_checkpoint(out / "generator").files)
    student = verify_checkpoint(out / "turbofan-monitor")  # what the monitor ran: the ensemble distilled
    assert student.model["members"] == 1 and student.training["teacher"]["model"]["members"] == 3
    made = {name: (out / name / "model.safetensors").stat().st_mtime
            for name in ("turbofan", "news", "image", "sales", "generator")}

    process, lines = start_demo(out, ports, *args)
    try:
        text = wait_serving(process, lines, timeout=300)
        assert text.count("reusing") == 6 and "training:" not in text, text
        check_demo_services(ports)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    assert {name: (out / name / "model.safetensors").stat().st_mtime for name in made} == made
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{ports['api']}/readyz", timeout=2)


def test_demo_retrains_what_changed(tmp_path, tiny_encoders):
    """A checkpoint made by the same code, data and settings is reused, unless --retrain; other settings (here
    --epochs) or other code make it stale."""
    from apps.actions import train_config
    from apps.demo import stale_reason
    from training.fingerprint import code_digest
    from training.tasks.specs import task_spec

    out = tmp_path / "demo"
    common = ["demo", "--out", out, "--tasks", "news", "--no-serve", "--model", f"news={tiny_encoders['bert']}"]
    assert run_cli_here(*common, "--epochs", "1").returncode == 0
    again = run_cli_here(*common, "--epochs", "1")
    assert again.returncode == 0 and "reusing" in again.stdout and "training:" not in again.stdout, again.stdout
    made = (out / "news" / "model.safetensors").stat().st_mtime_ns
    forced = run_cli_here(*common, "--epochs", "1", "--retrain")
    assert forced.returncode == 0 and "training:" in forced.stdout and "reusing" not in forced.stdout, forced.stdout
    assert (out / "news" / "model.safetensors").stat().st_mtime_ns != made
    run = task_spec("news").demo_runs()[0]
    options = {**run.options, "model": str(tiny_encoders["bert"])}
    engine = {**run.engine, "out": out / "news", "epochs": 1}
    assert stale_reason("news", engine, options, set()) is None
    assert stale_reason("news", {**engine, "epochs": 2}, options, set()) == \
        f"the settings changed since {out / 'news'} was made"
    assert "was trained again" in stale_reason("news", engine, options, {"news-teacher"})
    code = tmp_path / "code"
    code.mkdir()
    (code / "a.py").write_text("x = 1\n")
    before = code_digest(code)
    (code / "a.py").write_text("x = 2\n")
    assert code_digest(code) != before
    assert train_config("news", engine, options).task_options["model"] == str(tiny_encoders["bert"])


def test_demo_trains_again_when_its_data_changed(tmp_path, tiny_encoders):
    """On generated data (no MODELYARD_DATA) the demo writes it beside the checkpoint; a row added to that training
    file makes the checkpoint stale: the next demo names the change and trains again."""
    out = tmp_path / "demo"
    common = ["demo", "--out", out, "--tasks", "news", "--no-serve", "--model", f"news={tiny_encoders['bert']}",
              "--epochs", "1"]
    first = run_cli(*common, env={"MODELYARD_DATA": None})
    assert first.returncode == 0 and "training:" in first.stdout, first.stdout + first.stderr[-2000:]
    train_file = out / "news" / "synthetic-data" / "train.csv"
    with train_file.open("a") as handle:
        handle.write('"2","One more row","The team won the final."\n')
    again = run_cli(*common, env={"MODELYARD_DATA": None})
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"the data changed since {out / 'news'} was made" in " ".join(again.stdout.split()), again.stdout
    assert "training:" in again.stdout and "reusing" not in again.stdout


@pytest.mark.slow
@pytest.mark.skipif(real_cmapss() is None, reason="needs real C-MAPSS FD001 (MODELYARD_DATA)")
@pytest.mark.timeout(1300)  # the global 600 s would cut its own longer waits short
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
        result = run_cli("demo", "--out", tmp_path / "demo", "--app-port", app_port, "--api-port", free_port(6),
                         "--kafka-port", free_port(), "--metrics-port", free_port(), timeout=120)
    assert result.returncode == 1
    assert f"port {app_port} (--app-port) already in use" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "demo").exists()
