"""AG News topic classification data: the CSV format, the cleaning it needs, and a generator for the format.

Format (Zhang et al. 2015, `ag_news_csv/`): no header, every field quoted, three columns: class index 1-4
(World, Sports, Business, Sci/Tech), title, description. Files may be stored xz-compressed (`test.csv.xz`).
"""

from __future__ import annotations

import csv
import hashlib
import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data.errors import DataFormatError, find_data_file, open_text

LABELS = ("World", "Sports", "Business", "Sci/Tech")


@dataclass
class NewsSplit:
    texts: list[str]  # title and description joined, not yet cleaned
    labels: np.ndarray  # 0-based class index
    path: Path

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for text, label in zip(self.texts, self.labels.tolist(), strict=True):
            digest.update(f"{label}\t{text}\n".encode())
        return digest.hexdigest()[:16]


def read_news_csv(path: Path) -> NewsSplit:
    """Read one AG News CSV file, checking every row: three fields, a class 1-4, some text."""
    texts, labels = [], []
    with open_text(path) as handle:
        reader = csv.reader(handle, strict=True)
        try:
            for row in reader:
                line = reader.line_num
                if not row or not any(field.strip() for field in row):
                    continue
                if len(row) != 3:
                    raise DataFormatError(path, line, f"expected 3 quoted fields (class, title, description), "
                                          f"got {len(row)}")
                label, title, description = row
                if label.strip() not in ("1", "2", "3", "4"):
                    raise DataFormatError(path, line, f"expected a class index 1-4 in the first field, "
                                          f"got {label[:20]!r}")
                if not (title.strip() or description.strip()):
                    raise DataFormatError(path, line, "expected a title or a description, both are empty")
                texts.append(f"{title.strip()}. {description.strip()}")
                labels.append(int(label) - 1)
        except csv.Error as exc:
            raise DataFormatError(path, reader.line_num, f"malformed CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise DataFormatError(path, None, f"expected UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not texts:
        raise DataFormatError(path, None, "file holds no rows")
    return NewsSplit(texts, np.asarray(labels, dtype=np.int64), Path(path))


def find_split(data_dir: Path, name: str) -> Path:
    return find_data_file(Path(data_dir), f"{name}.csv")


# --- cleaning -----------------------------------------------------------------------------------------------------

# AG News was scraped with the "&" of HTML entities turned into a space: "isn&#39;t" reads "isn #39;t", "the &#36;10"
# reads "the  #36;10", "&quot;" reads " quot;"; escaped markup survives as "&lt;b&gt;", and "\" stands where the
# source had a line break.
_NUMERIC_ENTITY = re.compile(r"(?:\s|&)?#(\d{2,4});")
_NAMED_ENTITY = re.compile(r"\s?(?<![&\w])(quot|amp|lt|gt|nbsp);")
_TAG = re.compile(r"<[^<>]{0,200}>")
_SPACE = re.compile(r"\s+")


def _numeric_entity(match: re.Match) -> str:
    code = int(match.group(1))
    if 128 <= code < 160:  # the scrape kept Windows-1252 code points (#146 is a right quote, #151 an em dash)
        return bytes([code]).decode("cp1252", errors="replace")
    return chr(code) if code < 0x110000 else " "


def clean_text(text: str, lowercase: bool = False, stopwords: frozenset[str] | None = None) -> str:
    text = text.replace("\\", " ")
    text = _NUMERIC_ENTITY.sub(_numeric_entity, text)
    text = _NAMED_ENTITY.sub(lambda m: f"&{m.group(1)};", text)
    text = _TAG.sub(" ", html.unescape(html.unescape(text)))  # "&amp;lt;" is escaped twice in places
    text = _SPACE.sub(" ", text).strip()
    if lowercase:
        text = text.lower()
    if stopwords:
        text = " ".join(word for word in text.split(" ") if word.lower().strip(".,;:!?\"'()") not in stopwords)
    return text


def english_stopwords() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def cleaner(options: dict[str, Any]) -> Callable[[list[str]], list[str]]:
    """The cleaning a checkpoint was trained with (its `lowercase` / `remove_stopwords` options), for a list."""
    stopwords = english_stopwords() if options.get("remove_stopwords") else None
    lowercase = bool(options.get("lowercase"))
    return lambda texts: [clean_text(t, lowercase=lowercase, stopwords=stopwords) for t in texts]


# --- generated data -----------------------------------------------------------------------------------------------

_TOPIC_WORDS = {
    0: "government minister election president troops peace talks parliament border embassy rebels vote",
    1: "team coach season match league championship player goal tournament victory cup playoff",
    2: "shares profit company market investors quarter earnings stock bank prices economy sales",
    3: "software internet computer researchers space technology users network chip scientists web phone",
}
_COMMON_WORDS = "the a of in on for after with said new as at by from over will report week says".split()


def synthesize_news(out: Path, n_train: int = 800, n_test: int = 200, seed: int = 0) -> list[Path]:
    """Write train.csv and test.csv in the AG News format: topic words mixed with shared words and noise, plus
    the format's quirks (" #39;", "quot;", "\\" line breaks) so cleaning runs on generated data too."""
    rng = np.random.default_rng(seed)
    topic_words = {k: v.split() for k, v in _TOPIC_WORDS.items()}
    all_topic = [w for words in topic_words.values() for w in words]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("train", n_train), ("test", n_test)):
        path = out / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n")
            for i in range(rows):
                label = i % 4
                def sentence(length: int, label: int = label) -> str:
                    words = [rng.choice(topic_words[label]) if rng.random() < 0.35 else
                             rng.choice(all_topic) if rng.random() < 0.15 else rng.choice(_COMMON_WORDS)
                             for _ in range(length)]
                    return " ".join(words)
                title = sentence(int(rng.integers(4, 9))).capitalize()
                description = sentence(int(rng.integers(12, 30)))
                quirk = rng.integers(0, 4)
                if quirk == 0:
                    description = description.replace(" ", " #39;s ", 1)
                elif quirk == 1:
                    description = f"quot;{description}quot;"
                elif quirk == 2:
                    description = description.replace(" ", "\\", 1)
                writer.writerow([str(label + 1), title, description.capitalize() + "."])
        paths.append(path)
    return paths
