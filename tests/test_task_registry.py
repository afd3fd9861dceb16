"""A task is declared once: a sixth task (tests/toy_task.py) is its own module plus one line in the registry, and
every command reads it from there."""

import json

import pytest

from tests.conftest import run_cli_here
from training.checkpoint import verify_checkpoint


@pytest.fixture
def modelyard(monkeypatch):
    """`modelyard ARGS` with the toy task's module added to the registry: the one line a new task adds."""
    import training.tasks.specs as specs

    monkeypatch.setattr(specs, "REGISTERED", (*specs.REGISTERED, "tests.toy_task"))

    def run(*args: object) -> str:
        result = run_cli_here(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    return run


def test_a_sixth_task_is_its_own_module_and_one_registry_line(modelyard, tmp_path):
    assert "Toy: fit a line to noisy points." in modelyard("train", "--help")
    assert "--held-out" in modelyard("train", "toy", "--help")
    serve, tune = modelyard("serve", "--help"), modelyard("tune", "--help")
    assert "toy" not in serve and "toy" not in tune  # no service, no tune space: not offered

    assert "points.csv" in modelyard("data", "synth", "toy", "--out", tmp_path)
    out = tmp_path / "ckpt"
    trained = modelyard("train", "toy", "--out", out, "--data-dir", tmp_path, "--held-out", "100")
    assert "toy evaluation" in trained
    report = json.loads((out / "report.json").read_text())
    assert report["mse"] < 0.1 * report["baseline"]["mse"]  # the line was learned: far better than the mean
    assert verify_checkpoint(out).preprocessing == {"held_out": 100}

    exported = modelyard("export", out)
    assert "max abs difference ONNX Runtime vs torch" in exported
    assert "model.onnx" in verify_checkpoint(out).files
    assert "mse" in modelyard("compare", out)

    demo = tmp_path / "demo"
    assert "test MSE" in modelyard("demo", "--tasks", "toy", "--no-serve", "--out", demo)
    assert "report.json" in verify_checkpoint(demo / "toy").files
