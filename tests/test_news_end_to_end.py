"""News classifier through the public CLI: train (every backend, tensor parallelism included), report, export,
compare. Tiny random encoders keep it fast; the MiniLM accuracy run on real AG News is marked slow."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import (
    assert_clean_failure,
    assert_resumes_from_per_rank_optimizer_files,
    run_cli,
    run_cli_here,
)
from training.checkpoint import load_checkpoint, load_tokenizer, verify_checkpoint
from training.model_card import fmt_metric
from training.models import build_model
from training.tasks import news

TINY = ["--lr", "3e-3", "--batch-size", "16"]  # a tiny random encoder learns the generated topics at this rate


def reloaded_val_metrics(ckpt: Path) -> dict[str, float]:
    """Validation metrics of the saved (consolidated) weights, recomputed outside the training processes."""
    manifest, weights = load_checkpoint(ckpt)
    data = news.load_splits(manifest.training["data"])
    tokenizer = load_tokenizer(ckpt, manifest, manifest.preprocessing["tokenizer_dir"])
    model = build_model(manifest.model)
    model.load_state_dict(weights)
    model.eval()
    ids = news.encode(tokenizer, news.cleaner(manifest.preprocessing)(data.val.texts),
                      manifest.preprocessing["max_length"])
    with torch.no_grad():
        return news.make_validation(ids, data.val.labels, tokenizer.pad_token_id)(model)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, news_dir, tiny_encoders) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("news") / "ckpt"
    result = run_cli("train", "news", "--out", out, "--data-dir", news_dir, "--model", tiny_encoders["bert"],
                     "--epochs", "3", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_train_writes_checkpoint_report_and_plot(trained):
    out, result = trained
    manifest = verify_checkpoint(out)
    assert manifest.task == "news" and manifest.preprocessing["labels"] == ["World", "Sports", "Business", "Sci/Tech"]
    assert any(name.startswith("tokenizer/") for name in manifest.files)
    report = json.loads((out / "report.json").read_text())
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "per_class", "confusion_matrix",
                "most_confident_mistakes", "params", "latency_ms", "baseline"):
        assert key in report, key
    assert report["accuracy"] > 0.6  # chance is 0.25 on the four balanced generated topics
    assert np.sum(report["confusion_matrix"]) == report["test_rows"] == 120
    assert set(report["per_class"]) >= {"World", "Sports", "Business", "Sci/Tech", "macro avg"}
    assert report["baseline"]["accuracy"] > 0.6 and "TF-IDF" in report["baseline"]["method"]
    assert (out / "confusion_matrix.png").stat().st_size > 10_000
    assert "accuracy" in result.stdout and "baseline" in result.stdout
    assert reloaded_val_metrics(out)["val_loss"] == pytest.approx(manifest.metrics["val_loss"], rel=1e-5)


def test_export_has_dynamic_batch_and_sequence_axes(trained):
    out, _ = trained
    result = run_cli("export", out)
    assert result.returncode == 0, result.stderr[-2000:]
    diff = float(result.stdout.split("vs torch:")[1].split()[0])
    assert diff < 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    manifest = verify_checkpoint(out)
    assert {"model.onnx", "README.md"} <= set(manifest.files)
    card = (out / "README.md").read_text()  # the model card: metrics beside the baseline, the weights' sha256
    report = json.loads((out / "report.json").read_text())
    assert f"| test accuracy | {report['accuracy']:.4f} |" in card and "TF-IDF" in card
    assert f"| accuracy | {fmt_metric(report['accuracy'])} | {fmt_metric(report['baseline']['accuracy'])} |" in card
    assert manifest.files["model.safetensors"].sha256 in card and "## Intended use and limits" in card


def test_hf_folder_is_a_transformers_pipeline_with_the_checkpoints_labels(trained, news_dir):
    """`export --format hf`: a folder that transformers' text-classification pipeline loads offline, naming the
    checkpoint's labels and giving the checkpoint's answers."""
    from transformers import pipeline

    from serving.predictor import NewsPredictor

    out, _ = trained
    result = run_cli_here("export", out, "--format", "hf")
    assert result.returncode == 0 and 'pipeline("text-classification") loads it' in result.stdout, result.stdout
    assert float(result.stdout.split("vs the checkpoint:")[1].split()[0]) < 1e-5
    texts = news.load_splits(verify_checkpoint(out).training["data"]).test.texts[:24]
    classify = pipeline("text-classification", model=str(out / "hf"), device="cpu")
    answers = classify(texts, truncation=True, max_length=128)
    assert [a["label"] for a in answers] == [p["label"] for p in NewsPredictor(out, "torch").predict(texts)]
    assert {a["label"] for a in answers} <= {"World", "Sports", "Business", "Sci/Tech"}
    assert "pipeline(\"text-classification\"" in (out / "hf" / "README.md").read_text()
    assert "hf/README.md" in verify_checkpoint(out).files


def test_compare_prints_models_side_by_side(trained, tmp_path, news_dir, tiny_encoders):
    other = tmp_path / "distilbert"
    result = run_cli("train", "news", "--out", other, "--data-dir", news_dir, "--model", tiny_encoders["distilbert"],
                     "--epochs", "1", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli_here("compare", trained[0], other)
    assert result.returncode == 0, result.stderr[-2000:]
    for row in ("accuracy", "macro_f1", "params", "train time (s)", "latency (ms)"):
        assert row in result.stdout
    assert "distilbert" in result.stdout and "bert" in result.stdout
    assert_clean_failure(run_cli_here("compare", trained[0], tmp_path / "missing"), "manifest.json missing")


@pytest.mark.parametrize("arch", ["distilbert", "roberta"])
def test_other_encoder_architectures_train_and_reload(tmp_path, news_dir, tiny_encoders, arch):
    """Also --layers 1: the encoders have two layers; the checkpoint holds (and its config rebuilds) only the first."""
    out = tmp_path / arch
    result = run_cli("train", "news", "--out", out, "--data-dir", news_dir, "--model", tiny_encoders[arch],
                     "--max-steps", "4", "--augment", "all", "--lowercase", "--remove-stopwords", "--no-evaluate",
                     "--layers", "1", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = verify_checkpoint(out)
    assert manifest.model["hf_config"]["model_type"] == arch
    assert manifest.model["hf_config"]["n_layers" if arch == "distilbert" else "num_hidden_layers"] == 1
    _, weights = load_checkpoint(out)
    assert any(".layer.0." in name for name in weights) and not any(".layer.1." in name for name in weights)
    assert manifest.preprocessing["augment"] == ["delete", "swap"] and manifest.preprocessing["lowercase"]
    assert reloaded_val_metrics(out)["val_loss"] == pytest.approx(manifest.metrics["val_loss"], rel=1e-5)


# Every strategy runs on two ranks in the fast set (test_backends.py); here the fast set keeps what only a
# transformers model has (shardformer's pipeline split; its tensor split is the resume test's run below) and ZeRO-2;
# the rest run with `make test-all`.
NEWS_STRATEGIES = [
    pytest.param("colossalai", "hybrid", ["--tp", "2"], marks=pytest.mark.slow),
    ("colossalai", "hybrid", ["--pp", "2"]),
    pytest.param("torch", "fsdp", [], marks=pytest.mark.slow),
    ("colossalai", "zero2", []),
    pytest.param("fairscale", "oss", [], marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("backend", "strategy", "extra"), NEWS_STRATEGIES,
                         ids=["colossalai-hybrid--tp2", "colossalai-hybrid--pp2", "torch-fsdp", "colossalai-zero2",
                              "fairscale-oss"])
def test_two_ranks_on_every_backend_consolidate_the_encoder(tmp_path, news_dir, tiny_encoders, backend, strategy,
                                                            extra):
    """Under --tp 2 each rank holds half of every attention and MLP matrix, under --pp 2 half of the layers; the saved
    file must be the whole model, loadable by plain transformers, reproducing the validation loss measured on the
    split model."""
    out = tmp_path / "ckpt"
    result = run_cli("train", "news", "--out", out, "--data-dir", news_dir, "--model", tiny_encoders["bert"],
                     "--backend", backend, "--strategy", strategy, *extra, "--nproc", "2", "--max-steps", "6",
                     "--no-evaluate", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify_checkpoint(out).training["strategy"] == strategy
    assert_whole_encoder_saved(out, **{flag[2:]: int(n) for flag, n in zip(extra[::2], extra[1::2], strict=True)})


def assert_whole_encoder_saved(out: Path, tp: int = 1, pp: int = 1) -> None:
    manifest = verify_checkpoint(out)
    assert {k: manifest.training[k] for k in ("tp", "pp")} == {"tp": tp, "pp": pp}
    _, weights = load_checkpoint(out)
    assert weights["bert.encoder.layer.0.attention.self.query.weight"].shape == (32, 32)  # gathered, not a shard
    assert reloaded_val_metrics(out)["val_loss"] == pytest.approx(manifest.metrics["val_loss"], rel=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "colossalai", "--strategy", "hybrid", "--tp", "2", "--nproc", "3"],
         "a multiple of --tp x --pp"),
        (["--backend", "colossalai", "--strategy", "hybrid", "--pp", "2", "--nproc", "2", "--batch-size", "15"],
         "does not split into micro-batches for 2 pipeline stages"),
        (["--backend", "fairscale", "--strategy", "pipe"], "fairscale pipe needs a chain of single-tensor stages"),
        (["--backend", "fairscale", "--strategy", "tp", "--tp", "2", "--nproc", "2"],
         "fairscale tp has a plan for GPT-2 only"),
        (["--augment", "synonyms"], "unknown augmentation synonyms"),
        (["--layers", "3"], "has 2 encoder layers; choose 1..2"),
        (["--train-rows", "5000", "--eval-file", "SAME"], "--train-rows must be between"),
    ],
)
def test_impossible_news_settings_are_refused_in_one_line(tmp_path, news_dir, tiny_encoders, args, message):
    args = [str(news_dir / "train.csv") if a == "SAME" else a for a in args]
    if "--eval-file" in args:
        args += ["--train-file", str(news_dir / "train.csv")]
    result = run_cli_here("train", "news", "--out", tmp_path / "ckpt", "--data-dir", news_dir,
                          "--model", tiny_encoders["bert"], "--max-steps", "1", *args)
    assert_clean_failure(result, message)


@pytest.mark.slow
@pytest.mark.timeout(3700)  # the global 600 s would cut its own longer waits short
def test_minilm_accuracy_on_real_ag_news(tmp_path):
    """The issue's measurement: MiniLM fine-tuned on a stratified 6,000 of the real AG News test.csv rows,
    evaluated on the other 1,600 (only test.csv is public here). Target accuracy >= 0.88, and ahead of the TF-IDF
    baseline the same run fits on the same rows."""
    root = os.environ.get("MODELYARD_DATA")
    files = list((Path(root) / "ag_news").glob("test.csv*")) if root else []
    if not files:
        pytest.skip("real AG News test.csv not available")
    out = tmp_path / "minilm"
    result = run_cli("train", "news", "--out", out, "--train-file", files[0], "--eval-file", files[0],
                     "--train-rows", "6000", timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["test_rows"] == 1600
    assert report["accuracy"] >= 0.88 and report["accuracy"] > report["baseline"]["accuracy"], report


def test_tensor_parallel_run_resumes_from_per_rank_optimizer_shards(tmp_path, news_dir, tiny_encoders):
    """(The fast set's --tp 2 run: its checkpoint is checked as the parametrized test above checks the others.)"""
    assert_resumes_from_per_rank_optimizer_files(
        "train", "news", "--data-dir", news_dir, "--model", tiny_encoders["bert"], "--backend", "colossalai",
        "--strategy", "hybrid", "--tp", "2", "--nproc", "2", "--no-evaluate", *TINY, out=tmp_path / "ckpt")
    assert_whole_encoder_saved(tmp_path / "ckpt", tp=2)
