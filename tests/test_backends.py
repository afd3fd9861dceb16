"""Two gloo ranks per backend/strategy: train a few steps, consolidate, reload, and get the same predictions."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import assert_clean_failure, run_cli, run_cli_here
from training.checkpoint import load_checkpoint, verify_checkpoint
from training.config import TrainConfig
from training.engine.backends import StrategyUnavailable, backend_class
from training.models import build_model
from training.tasks import turbofan

# Every backend and strategy runs on two ranks at least once in the fast set: here, or (FSDP and plain ZeRO-2) on the
# image, news and generator models, whose runs of them are fast; their turbofan runs are `slow`.
ELSEWHERE = pytest.mark.slow
CPU_STRATEGIES = [
    ("torch", "ddp", []),
    pytest.param("torch", "fsdp", [], marks=ELSEWHERE),
    ("colossalai", "ddp", []),
    ("colossalai", "zero1", []),
    pytest.param("colossalai", "zero2", [], marks=ELSEWHERE),
    ("colossalai", "zero2", ["--offload"]),
    ("fairscale", "oss", []),
]


def reloaded_val_rmse(ckpt) -> float:
    """The validation RMSE of the saved (consolidated) weights, recomputed outside the training processes."""
    manifest, weights = load_checkpoint(ckpt)
    data = turbofan.load_data(Path(manifest.training["data_dir"]), manifest.training["subset"],
                              manifest.training["seed"], manifest.preprocessing["window"])
    model = build_model(manifest.model)
    model.load_state_dict(weights)
    model.eval()
    val_x, val_y, _ = turbofan.split_arrays(data, data.val_units)
    with torch.no_grad():
        return float(np.sqrt(np.mean((turbofan.predict(model, val_x, "rul") - val_y) ** 2)))


@pytest.mark.parametrize(("backend", "strategy", "extra"), CPU_STRATEGIES,
                         ids=["torch-ddp", "torch-fsdp", "colossalai-ddp", "colossalai-zero1", "colossalai-zero2",
                              "colossalai-zero2-offload", "fairscale-oss"])
def test_two_ranks_train_save_reload(tmp_path, synthetic_cmapss, backend, strategy, extra):
    out = tmp_path / "ckpt"
    result = run_cli("train", "turbofan", "--out", out, "--data-dir", synthetic_cmapss, "--backend", backend,
                     "--strategy", strategy, *extra, "--nproc", "2", "--max-steps", "6", "--batch-size", "64",
                     "--grad-accum", "2", "--no-evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = verify_checkpoint(out)
    assert manifest.training["backend"] == backend and manifest.training["strategy"] == strategy
    assert manifest.training["steps"] == 6
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 6 and np.isfinite(log[-1]["train_loss"])
    # The sharded/wrapped model computed val_rmse inside training; the consolidated file must reproduce it.
    assert reloaded_val_rmse(out) == pytest.approx(manifest.metrics["val_rmse"], rel=1e-5)


@pytest.mark.parametrize("extra", [[], ["--checkpointing"], ["--model", "transformer"]],
                         ids=["lstm", "lstm-checkpointing", "transformer"])
def test_fairscale_pipe_splits_stages_and_saves_original_names(tmp_path, synthetic_cmapss, extra):
    out = tmp_path / "ckpt"
    result = run_cli("train", "turbofan", "--out", out, "--data-dir", synthetic_cmapss, "--backend", "fairscale",
                     "--strategy", "pipe", "--max-steps", "6", "--batch-size", "64", "--no-evaluate", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest, weights = load_checkpoint(out)
    # the model's own names (here the default LSTM ensemble's third head), not Pipe's partition indices
    assert ("head.mlp.0.bias" if "transformer" in extra else "head.members.2.mlp.0.bias") in weights
    assert reloaded_val_rmse(out) == pytest.approx(manifest.metrics["val_rmse"], rel=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "colossalai", "--strategy", "gemini"], "gemini keeps parameters in CUDA memory"),
        (["--backend", "fairscale", "--strategy", "fsdp"], "fairscale fsdp allocates CUDA streams"),
        (["--backend", "colossalai", "--strategy", "fsdp"], "colossalai fsdp (TorchFSDPPlugin) places the model"),
        (["--backend", "colossalai", "--strategy", "hybrid", "--tp", "2"], "needs a model with a shardformer policy"),
        (["--backend", "torch", "--strategy", "zero2"], "backend torch has no strategy 'zero2'"),
        (["--backend", "fairscale", "--strategy", "pipe", "--nproc", "2"], "run it with --nproc 1"),
        (["--backend", "nope"], "'nope' is not one of 'torch', 'colossalai', 'fairscale'"),
        (["--precision", "fp16"], "fp16 needs loss scaling on a GPU"),
        (["--backend", "torch", "--tp", "2"], "--tp/--pp apply only to"),
        (["--backend", "fairscale", "--strategy", "tp", "--tp", "2", "--pp", "2", "--nproc", "2"],
         "not --pp with fairscale tp"),
        (["--backend", "fairscale", "--strategy", "tp", "--tp", "2"], "dividing the process count (1)"),
        (["--backend", "fairscale", "--strategy", "tp", "--tp", "2", "--nproc", "2"], "has none to split"),
        (["--device", "cuda"], "no CUDA device is available"),
    ],
)
def test_impossible_strategies_are_refused_in_one_line(tmp_path, synthetic_cmapss, args, message):
    result = run_cli_here("train", "turbofan", "--out", tmp_path / "x", "--data-dir", synthetic_cmapss, *args)
    assert_clean_failure(result, message)
    # One message (rich may wrap it); a refused option value comes with click's usage and help hint lines.
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len([line for line in lines if not line.startswith(("Usage:", "Try "))]) <= 3, result.stderr


@pytest.mark.parametrize(
    ("backend", "strategy", "precision", "message"),
    [
        ("colossalai", "gemini", "fp32", "gemini trains in fp16 or bf16"),
        ("fairscale", "pipe", "bf16", "use --precision fp32 with it"),
    ],
)
def test_gpu_combinations_checked_without_a_gpu(backend, strategy, precision, message):
    """What would be refused on a CUDA machine is decided before any process starts, so it is testable here."""
    cfg = TrainConfig(task="turbofan", out="unused", backend=backend, strategy=strategy, precision=precision)
    with pytest.raises(StrategyUnavailable, match=message):
        backend_class(cfg, "cuda")
    cfg.precision = "bf16" if precision == "fp32" else "fp32"
    assert backend_class(cfg, "cuda").name == backend  # the same strategy in a precision it takes


def test_precision_auto_takes_the_tasks_choice_only_where_the_hardware_computes_it(monkeypatch):
    from training.engine import distributed

    assert distributed.resolve_precision("fp16", "cuda", "bf16") == "fp16"  # a stated precision is kept
    assert distributed.resolve_precision("auto", "cpu", "fp32") == "fp32"
    monkeypatch.setattr(distributed, "native_bf16", lambda device: True)
    assert distributed.resolve_precision("auto", "cpu", "bf16") == "bf16"
    monkeypatch.setattr(distributed, "native_bf16", lambda device: False)
    assert distributed.resolve_precision("auto", "cpu", "bf16") == "fp32"  # emulated bf16 would be slower
