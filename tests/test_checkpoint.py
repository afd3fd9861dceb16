import json

import numpy as np
import pytest
import torch

from tests.conftest import assert_clean_failure, run_cli_here
from training.checkpoint import (
    CheckpointError,
    CheckpointManifest,
    load_checkpoint,
    record_files,
    save_arrays,
    save_checkpoint,
    verify_checkpoint,
)


@pytest.fixture()
def ckpt(tmp_path):
    manifest = CheckpointManifest(task="turbofan", model={"arch": "lstm", "n_features": 3})
    weights = {"a": torch.randn(4, 3), "b": torch.arange(5)}
    out = save_checkpoint(tmp_path / "ckpt", manifest, weights)
    return out, weights


def test_round_trip_records_sha256_and_versions(ckpt):
    out, weights = ckpt
    manifest, loaded = load_checkpoint(out)
    assert set(loaded) == {"a", "b"} and torch.equal(loaded["a"], weights["a"])
    raw = json.loads((out / "manifest.json").read_text())
    assert len(raw["files"]["model.safetensors"]["sha256"]) == 64
    assert "torch" in raw["library_versions"] and raw["format_version"] == 1


def test_tied_weights_are_saved_as_independent_tensors(tmp_path):
    shared = torch.randn(3, 3)
    out = save_checkpoint(tmp_path / "c", CheckpointManifest(task="t", model={}), {"x": shared, "y": shared})
    assert torch.equal(load_checkpoint(out)[1]["y"], shared)


def test_numpy_arrays_in_any_memory_order_read_back_as_saved(tmp_path):
    """A Fortran-ordered array (pandas' to_numpy of a wide frame: the M5 sales) once read back scrambled."""
    from safetensors.numpy import load_file

    wide = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    save_arrays(tmp_path / "a.safetensors", {"wide": wide, "view": wide[:, 1:3]})
    loaded = load_file(str(tmp_path / "a.safetensors"))
    assert np.array_equal(loaded["wide"], wide) and np.array_equal(loaded["view"], wide[:, 1:3])


def test_tampered_weights_are_refused_naming_the_file(ckpt):
    out, _ = ckpt
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: sha256 does not match"):
        load_checkpoint(out)


def test_truncated_weights_are_refused(ckpt):
    out, _ = ckpt
    path = out / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated or replaced"):
        load_checkpoint(out)


def test_extra_files_are_hashed_and_checked(ckpt):
    out, _ = ckpt
    (out / "report.json").write_text("{}")
    manifest = verify_checkpoint(out)
    record_files(out, manifest, ["report.json"])
    verify_checkpoint(out)
    (out / "report.json").write_text('{"rmse": 1}')
    with pytest.raises(CheckpointError, match="report.json"):
        verify_checkpoint(out)


def test_missing_or_invalid_manifest(tmp_path, ckpt):
    with pytest.raises(CheckpointError, match="manifest.json missing"):
        load_checkpoint(tmp_path)
    out, _ = ckpt
    (out / "manifest.json").write_text('{"task": 3}')
    with pytest.raises(CheckpointError, match="invalid manifest"):
        load_checkpoint(out)


def test_cli_refuses_tampered_checkpoint(ckpt):
    out, _ = ckpt
    (out / "model.safetensors").write_bytes(b"not safetensors")
    for command in ("evaluate", "export"):
        assert_clean_failure(run_cli_here(command, out), "model.safetensors")
