from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import assert_clean_failure, run_cli_here
from training.data.ag_news import LABELS, clean_text, read_news_csv, synthesize_news
from training.data.batching import BucketBatchSampler, pad_batch
from training.data.errors import DataFormatError
from training.data.text_augment import augment_ids, parse_augment


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ('"3","only a title"', "expected 3 quoted fields (class, title, description), got 2"),
        ('"7","Title","Description"', "expected a class index 1-4 in the first field, got '7'"),
        ('"2","",""', "expected a title or a description, both are empty"),
        ('"2","Title "broken" quoting","x"', "malformed CSV"),
    ],
)
def test_malformed_news_csv_names_file_and_line(tmp_path, bad_row, message):
    path = tmp_path / "train.csv"
    path.write_text('"1","Fine title","Fine description."\n' + bad_row + "\n")
    with pytest.raises(DataFormatError) as info:
        read_news_csv(path)
    assert f"{path}:2:" in str(info.value)
    assert message in str(info.value)


def test_cli_reports_bad_news_row_without_traceback(tmp_path):
    data = tmp_path / "news"
    synthesize_news(data, n_train=40, n_test=8)
    with open(data / "train.csv", "a") as handle:
        handle.write('"9","Bad class","row"\n')
    result = run_cli_here("train", "news", "--out", tmp_path / "ckpt", "--data-dir", data, "--max-steps", "1")
    assert_clean_failure(result, f"{data / 'train.csv'}:41:", "class index 1-4")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Bears Claw Back (Reuters). Reuters - Short-sellers, Wall Street #39;s dwindling\\band",
         "Bears Claw Back (Reuters). Reuters - Short-sellers, Wall Street's dwindling band"),
        ("He said  quot;no comment, quot; to the  #36;10 million bid", 'He said "no comment," to the $10 million bid'),
        ("Read &lt;b&gt;more&lt;/b&gt; here &amp; there", "Read more here & there"),
        ("end  #151; of an era, it #146;s over", "end \u2014 of an era, it\u2019s over"),
    ],
)
def test_cleaning_undoes_ag_news_scrape_artifacts(raw, clean):
    assert clean_text(raw) == clean


def test_cleaning_options_lowercase_and_stopwords():
    assert clean_text("The Bank of England raised rates", lowercase=True,
                      stopwords=frozenset({"the", "of"})) == "bank england raised rates"


def test_generator_writes_the_real_format(tmp_path):
    train, test = synthesize_news(tmp_path, n_train=40, n_test=12, seed=3)
    split = read_news_csv(train)
    assert len(split.texts) == 40 and sorted(set(split.labels.tolist())) == [0, 1, 2, 3]
    assert train.read_text().startswith('"1","')  # every field quoted, no header
    assert len(read_news_csv(test).texts) == 12 and len(LABELS) == 4


def test_bucket_batches_split_ranks_evenly_and_group_lengths():
    lengths = np.random.default_rng(0).integers(5, 120, size=1000)
    ranks = [list(BucketBatchSampler(lengths, 16, rank=r, world_size=2, seed=1)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    seen = [i for batches in ranks for batch in batches for i in batch]
    assert len(seen) == len(set(seen))  # no sample on two ranks
    spread = np.mean([np.ptp(lengths[b]) for b in ranks[0]])
    assert spread < 0.25 * np.ptp(lengths)  # batches hold similar lengths
    other_epoch = BucketBatchSampler(lengths, 16, rank=0, world_size=2, seed=1)
    other_epoch.set_epoch(1)
    assert list(other_epoch) != ranks[0]


def test_dynamic_padding_pads_to_the_longest_in_batch():
    ids, mask = pad_batch([[1, 5, 2], [1, 2]], pad_id=0)
    assert ids.tolist() == [[1, 5, 2], [1, 2, 0]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_augmentations_keep_special_tokens_and_repeat_under_a_seed():
    ids = [101, *range(1000, 1040), 102]
    torch.manual_seed(0)
    first = augment_ids(ids, ("delete", "swap"))
    torch.manual_seed(0)
    assert augment_ids(ids, ("delete", "swap")) == first
    assert first[0] == 101 and first[-1] == 102 and first != ids and len(first) < len(ids)
    assert parse_augment("all") == ("delete", "swap")
    with pytest.raises(ValueError, match="unknown augmentation"):
        parse_augment("synonyms")


def test_real_ag_news_file_parses_when_present():
    import os

    root = os.environ.get("MODELYARD_DATA")
    if not root or not list((Path(root) / "ag_news").glob("test.csv*")):
        pytest.skip("real AG News test.csv not available")
    from training.data.ag_news import find_split

    split = read_news_csv(find_split(Path(root) / "ag_news", "test"))
    assert len(split.texts) == 7600 and np.bincount(split.labels).tolist() == [1900] * 4
