"""WikiText readers, the token-block corpus, sliding-window perplexity, text-quality measures, and the decoding
pieces the generation API streams with."""

import lzma
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.decoding import Decoding, TextStream, TokenChooser
from training.data.errors import DataFormatError
from training.data.lm_blocks import TokenBlocks, token_ids
from training.data.wikitext import detokenize, find_split, read_split
from training.metrics.perplexity import sliding_perplexity, windows
from training.metrics.text_quality import distinct_n, quality, repeated_ngram_share, words_before_loop
from training.models.causal_lm import train_byte_bpe

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2"


@pytest.fixture(scope="module")
def wiki(wikitext_dir) -> Path:
    return wikitext_dir


@pytest.fixture(scope="module")
def tokenizer(wiki):
    return train_byte_bpe(read_split(wiki / "wiki.train.tokens", "train").articles, vocab_size=600)


def test_articles_split_at_top_level_headings_in_both_forms_and_xz(wiki, tmp_path):
    split = read_split(wiki / "wiki.valid.tokens", "valid")
    assert len(split.articles) == 12
    assert all(article.startswith(" = ") and not article.startswith(" = = ") for article in split.articles)
    assert split.words == len((wiki / "wiki.valid.tokens").read_text().split())
    packed = tmp_path / "wiki.valid.raw.xz"
    packed.write_bytes(lzma.compress((wiki / "wiki.valid.tokens").read_bytes()))
    assert find_split(tmp_path, "valid") == packed
    assert read_split(packed, "valid").articles == split.articles
    assert find_split(tmp_path, "train") is None


def test_unreadable_files_are_named(tmp_path):
    bad = tmp_path / "wiki.test.tokens"
    bad.write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(DataFormatError, match="wiki.test.tokens"):
        read_split(bad, "test")
    broken = tmp_path / "wiki.test.raw.xz"
    broken.write_bytes(b"not xz at all")
    with pytest.raises(DataFormatError, match="not a readable"):
        read_split(broken, "test")
    empty = tmp_path / "wiki.valid.tokens"
    empty.write_text(" \n \n")
    with pytest.raises(DataFormatError, match="holds no text"):
        read_split(empty, "valid")


def test_detokenize_rejoins_wikitext_escapes():
    text = ' = Title = \n He said " hello " ( twice ) , it was 1 @,@ 200 m and 3 @.@ 5 % well @-@ known . It isn \'t'
    assert detokenize(text) == '= Title =\n He said "hello" (twice), it was 1,200 m and 3.5 % well-known. It isn\'t'


@pytest.mark.skipif(not (REAL / "wiki.valid.tokens.xz").is_file(), reason="real WikiText-2 not present")
def test_real_wikitext2_valid_split():
    split = read_split(REAL / "wiki.valid.tokens.xz", "valid")
    assert split.words == 213_886  # `wc -w` of the published file
    assert split.articles[0].startswith(" = Homarus gammarus = ")
    assert len(split.articles) == 60


def test_corpus_is_cached_and_cut_into_blocks(wiki, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELYARD_CACHE", str(tmp_path / "cache"))
    articles = read_split(wiki / "wiki.test.tokens", "test").articles
    corpus = token_ids(tokenizer, articles)
    assert list((tmp_path / "cache" / "lm-tokens").glob("*.npz"))
    assert np.array_equal(token_ids(tokenizer, articles).ids, corpus.ids)  # from the cache
    assert len(corpus.ends) == len(articles) and corpus.ends[-1] == len(corpus.ids)
    assert (corpus.ids[corpus.ends - 1] == tokenizer.eos_token_id).all()  # each article ends with end-of-text
    head, count = corpus.head(int(corpus.ends[2]) + 1)
    assert count == 3 and len(head) == corpus.ends[2]
    blocks = TokenBlocks(corpus.ids, 32)
    assert len(blocks) == len(corpus.ids) // 32 and blocks[1][0].tolist() == corpus.ids[32:64].tolist()
    with pytest.raises(ValueError, match="fewer than one block"):
        TokenBlocks(corpus.ids[:10], 32)


def test_a_gpt2_from_scratch_takes_the_gpt2_tokenizer_in_modelyard_data(wiki, tokenizer, tmp_path, monkeypatch):
    """GPT-2's vocab.json + merges.txt under $MODELYARD_DATA/gpt2_tokenizer (here the module's small BPE saved in
    their format) are used over learning a BPE from the training text."""
    from training.tasks.generator import model_and_tokenizer

    folder = tmp_path / "data" / "gpt2_tokenizer"
    folder.mkdir(parents=True)
    tokenizer.backend_tokenizer.model.save(str(folder))
    monkeypatch.setenv("MODELYARD_DATA", str(tmp_path / "data"))
    opts = {"model": None, "tokenizer": None, "size": "tiny"}
    model, taken, described = model_and_tokenizer(opts, wiki, ["unused"])
    assert described == f"GPT-2 tiny from scratch, GPT-2 BPE from {folder}"
    assert len(taken) == model.config.vocab_size == len(tokenizer)
    monkeypatch.delenv("MODELYARD_DATA")
    learned = model_and_tokenizer(opts, wiki, ["a b a b"] * 4)[2]
    assert learned.endswith("a byte-level BPE learned from the training text")


@pytest.mark.parametrize(("n", "context", "stride"), [(100, 16, 8), (100, 16, 16), (17, 16, 5), (10, 64, 32)])
def test_sliding_windows_score_every_token_but_the_first_once(n, context, stride):
    scored = []
    for begin, end, count in windows(n, context, stride):
        assert end - begin <= context and count <= end - begin
        scored += list(range(end - count, end))
    assert scored == list(range(1, n))


def test_sliding_perplexity_matches_the_model_loss_in_one_window():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=1, n_head=2)).eval()
    ids = np.random.default_rng(0).integers(0, 50, 40)
    with torch.no_grad():
        loss = model(input_ids=torch.from_numpy(ids[None]), labels=torch.from_numpy(ids[None])).loss.item()
    whole = sliding_perplexity(model, ids, context=64, stride=32, words=20)
    assert whole.tokens == 39 and whole.token_level == pytest.approx(math.exp(loss), rel=1e-4)
    assert whole.word_level == pytest.approx(math.exp(loss * 39 / 20), rel=1e-4)
    strided = sliding_perplexity(model, ids, context=16, stride=4)
    assert strided.tokens == 39 and strided.token_level != pytest.approx(whole.token_level, rel=1e-6)


def test_sliding_perplexity_projects_only_scored_positions_and_agrees_with_one_window_at_a_time():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=64)).eval()
    ids = np.random.default_rng(1).integers(0, 60, 47)
    nll = 0.0
    with torch.no_grad():
        for begin, end, count in windows(len(ids), 16, 6):
            window = torch.from_numpy(ids[None, begin:end])
            log_probs = torch.log_softmax(model(input_ids=window).logits[0, :-1], -1)
            picked = log_probs.gather(-1, window[0, 1:, None])[:, 0]
            nll -= float(picked[-count:].sum())
    seen = []
    head = model.lm_head.forward
    model.lm_head.forward = lambda hidden: seen.append(hidden.shape[1]) or head(hidden)
    batched = sliding_perplexity(model, ids, context=16, stride=6, batch=3)
    assert batched.tokens == 46 and batched.nll == pytest.approx(nll, rel=1e-5)
    assert max(seen[1:]) < 15  # after the first group, fewer positions than a whole window reach the head


def test_text_quality_measures():
    assert distinct_n(["a b c d"], 1) == 1.0 and distinct_n(["a a a a"], 1) == 0.25
    assert repeated_ngram_share("a b c d a b c d") == pytest.approx(1 / 5)
    assert words_before_loop("x y a b c d a b c d") == 6 and words_before_loop("a b c d e") == 5
    assert set(quality(["a b c", "d e f"])) == {"distinct_1", "distinct_2", "repeated_4gram_share",
                                                 "words_before_loop"}


def test_text_stream_holds_back_possible_stop_strings(tokenizer):
    ids = tokenizer("The river reached the old harbour. END more", add_special_tokens=False)["input_ids"]
    stream = TextStream(tokenizer, ("END",))
    released = ""
    for token in ids:
        released += stream.add(token)
        assert not stream.text[len(released):].startswith("END") or stream.stopped
        if stream.stopped:
            break
    released += stream.finish()
    assert stream.stopped and released == "The river reached the old harbour. "


def test_token_chooser_is_greedy_at_zero_temperature_and_reproducible_with_a_seed():
    logits = torch.tensor([0.1, 3.0, 0.2, 2.9])
    seen = torch.tensor([0])
    assert TokenChooser(Decoding(temperature=0))(logits, seen) == 1

    def draws(seed: int) -> list[int]:
        chooser = TokenChooser(Decoding(temperature=1.5, seed=seed))
        return [chooser(logits, seen) for _ in range(30)]

    assert draws(7) == draws(7) and len(set(draws(7))) > 1  # one seeded stream: the same draws, not one repeated
    assert draws(7) != draws(8)
    chooser = TokenChooser(Decoding(temperature=1.0, top_k=2, seed=1))
    assert {chooser(logits, seen) for _ in range(50)} <= {1, 3}
    penalised = TokenChooser(Decoding(temperature=0, repetition_penalty=10.0))
    assert penalised(logits, torch.tensor([1])) == 3  # the token already seen loses to the next best
