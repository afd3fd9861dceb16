"""Tiny randomly initialised encoders of the architectures `--model` must accept (BERT, DistilBERT, RoBERTa), saved
as local Hugging Face folders with a tokenizer. Nothing is downloaded: BERT-style models reuse the MiniLM package's
WordPiece vocabulary; RoBERTa gets a byte-level BPE trained here on generated text."""

from __future__ import annotations

from pathlib import Path


def _wordpiece_tokenizer():
    from transformers import AutoTokenizer

    from training.models.text_classifier import default_encoder

    return AutoTokenizer.from_pretrained(default_encoder())


def _bpe_tokenizer(corpus: list[str]):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=600, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                mask_token="<mask>")


def make_tiny_encoder(out: Path, arch: str, corpus: list[str]) -> Path:
    """Write a tiny `arch` (bert | distilbert | roberta) model + tokenizer to `out`; 4 heads so --tp 2 splits it."""
    import torch
    from transformers import AutoModel, BertConfig, DistilBertConfig, RobertaConfig

    torch.manual_seed(0)  # the same tiny model in every test session
    if arch == "roberta":
        tokenizer = _bpe_tokenizer(corpus)
        config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=160, pad_token_id=tokenizer.pad_token_id)
    else:
        tokenizer = _wordpiece_tokenizer()
        if arch == "bert":
            config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64, max_position_embeddings=160)
        else:
            config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                      max_position_embeddings=160)
    model = AutoModel.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_tiny_causal_lm(folder: Path, corpus: list[str]) -> Path:
    """A tiny random GPT-2 with a byte-level BPE learned from `corpus`, saved as a Hugging Face folder: stands in for
    a pretrained causal LM (`--model FOLDER`) where none can be downloaded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from training.models.causal_lm import train_byte_bpe

    tokenizer = train_byte_bpe(corpus, vocab_size=800)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_chat_llama(folder: Path) -> Path:
    """A tiny random llama-architecture model (SmolLM2's shape in miniature: grouped-query attention, tied
    embeddings) with SmolLM2's tokenizer and chat template, saved as a Hugging Face folder: a chat model that trains
    and serves in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from training.models.causal_lm import smollm2_file

    torch.manual_seed(0)
    source, gguf = smollm2_file()
    tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=gguf)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, rope_theta=10000.0, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
