"""Resume after kill -9 reaches the uninterrupted result; multi-machine rendezvous; early stopping."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli
from training.checkpoint import load_checkpoint, verify_checkpoint
from training.engine.distributed import free_port

# One LSTM instead of the default ensemble: these tests are about the engine, and it keeps them three times faster.
TRAIN = ["--nproc", "2", "--epochs", "3", "--batch-size", "128", "--no-evaluate", "--members", "1"]


def processes_running(fragment: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in command:
                pids.append(int(entry.name))
    return pids


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, synthetic_cmapss):
    reference = tmp_path / "reference"
    assert run_cli("train", "turbofan", "--out", reference, "--data-dir", synthetic_cmapss, *TRAIN).returncode == 0

    crashed = tmp_path / "crashed"
    args = [sys.executable, "-m", "apps.cli", "train", "turbofan", "--out", str(crashed), "--data-dir",
            str(synthetic_cmapss), *TRAIN]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    latest = crashed / "state" / "latest.json"
    deadline = time.time() + 300
    while not (latest.is_file() and json.loads(latest.read_text())["dir"] == "epoch-1"):
        assert proc.poll() is None and time.time() < deadline, "training ended before its first epoch was saved"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher dies mid-epoch 2; its ranks must die with it
    proc.wait()
    ranks = str(crashed / "train_config.json")
    deadline = time.time() + 15
    while processes_running(ranks) and time.time() < deadline:
        time.sleep(0.1)
    assert not processes_running(ranks), "ranks outlived their killed launcher"
    assert not (crashed / "model.safetensors").exists()

    resumed = run_cli("train", "turbofan", "--out", crashed, "--data-dir", synthetic_cmapss, *TRAIN, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref_manifest, ref_weights = load_checkpoint(reference)
    manifest, weights = load_checkpoint(crashed)
    # Same seed, same data order, restored optimizer and RNG: equal up to float summation noise.
    assert manifest.metrics["val_rmse"] == pytest.approx(ref_manifest.metrics["val_rmse"], rel=1e-6)
    for name, tensor in ref_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-6, atol=1e-7)
    log = [json.loads(line)["epoch"] for line in (crashed / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]


def test_resume_refuses_state_from_a_different_run(tmp_path, synthetic_cmapss):
    out = tmp_path / "ckpt"
    args = ["train", "turbofan", "--out", out, "--data-dir", synthetic_cmapss, "--max-steps", "3", "--no-evaluate"]
    assert run_cli(*args).returncode == 0
    result = run_cli(*args, "--resume", "--seed", "7")
    assert result.returncode != 0 and "cannot resume" in result.stderr and "seed=0" in result.stderr


def test_two_machines_join_through_rendezvous(tmp_path, synthetic_cmapss):
    """Two launchers (one per 'machine', here both on 127.0.0.1) form one 2-rank job via static rendezvous."""
    endpoint = f"127.0.0.1:{free_port()}"
    out = tmp_path / "ckpt"
    procs = [subprocess.Popen([sys.executable, "-m", "apps.cli", "train", "turbofan", "--out", str(out),
                               "--data-dir", str(synthetic_cmapss), "--nproc", "1", "--nnodes", "2", "--node-rank",
                               str(rank), "--rdzv-endpoint", endpoint, "--max-steps", "4", "--no-evaluate",
                               "--members", "1"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    manifest = verify_checkpoint(out)
    assert manifest.training["nnodes"] == 2 and manifest.training["steps"] == 4


def test_early_stopping_stops_when_validation_stalls(tmp_path, synthetic_cmapss):
    out = tmp_path / "ckpt"
    # lr 0 leaves the weights unchanged, so validation cannot improve after the first epoch.
    result = run_cli("train", "turbofan", "--out", out, "--data-dir", synthetic_cmapss, "--epochs", "10", "--lr", "0",
                     "--early-stop-patience", "2", "--no-evaluate", "--members", "1", "--batch-size", "512")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = verify_checkpoint(out)
    assert manifest.training["stopped_early"] is True and manifest.training["epochs_run"] == 3


def test_schedule_warms_up_then_decays_to_the_jobs_floor():
    from training.engine.trainer import lr_factor

    assert lr_factor(0, 10, 110) == pytest.approx(0.1) and lr_factor(9, 10, 110) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110) == pytest.approx(0.55)  # half way down the cosine from 1 to the default floor 0.1
    assert lr_factor(110, 10, 110) == pytest.approx(0.1) and lr_factor(110, 10, 110, floor=0.0) == 0.0
    assert lr_factor(60, 10, 110, floor=0.0) == pytest.approx(0.5)
