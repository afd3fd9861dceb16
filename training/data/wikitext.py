"""WikiText-2 in its two public forms: `wiki.{split}.tokens` (rare words as `<unk>`, numbers and hyphens escaped as
` @-@ `, ` @,@ `, ` @.@ `) and `wiki.{split}.raw` (the same text without `<unk>`), either one optionally xz-compressed.

An article starts at a top-level heading line (` = Title = `); sections are ` = = Section = = `. Articles are what the
language-model corpus joins with end-of-text tokens (training.data.lm_blocks).
"""

from __future__ import annotations

import hashlib
import lzma
import re
from dataclasses import dataclass
from pathlib import Path

from training.data.errors import DataFormatError, open_text

SPLITS = ("train", "valid", "test")
FORMS = ("tokens", "raw")
_ARTICLE = re.compile(r"^ = [^=].* = $")


@dataclass(frozen=True)
class WikiSplit:
    name: str
    path: Path
    articles: list[str]  # each the article's lines joined with "\n", as in the file
    words: int  # whitespace-separated words of the file's text: the denominator of word-level perplexity

    @property
    def text(self) -> str:
        return "\n".join(self.articles)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def find_split(data_dir: Path, split: str) -> Path | None:
    """`wiki.{split}.tokens` or `.raw` (or their .xz) in `data_dir` or its `derived/`; None when absent."""
    for folder in (Path(data_dir), Path(data_dir) / "derived"):
        for form in FORMS:
            for name in (f"wiki.{split}.{form}", f"wiki.{split}.{form}.xz"):
                if (folder / name).is_file():
                    return folder / name
    return None


def read_split(path: Path, name: str) -> WikiSplit:
    """The articles of one WikiText file; refuses a file that is not UTF-8 text or holds no words."""
    path = Path(path)
    try:
        with open_text(path) as handle:
            lines = [line.rstrip("\r\n") for line in handle]
    except (UnicodeDecodeError, EOFError, OSError, lzma.LZMAError) as exc:
        raise DataFormatError(path, None, f"not a readable UTF-8 WikiText file ({exc})") from None
    for number, line in enumerate(lines, 1):
        if "\x00" in line:
            raise DataFormatError(path, number, "binary data (a NUL byte) in a text file")
    articles: list[list[str]] = []
    for line in lines:
        if _ARTICLE.match(line) or not articles:
            articles.append([])
        articles[-1].append(line)
    joined = [text for text in ("\n".join(article).strip("\n") for article in articles) if text.strip()]
    words = sum(len(line.split()) for line in lines)
    if words == 0:
        raise DataFormatError(path, None, "holds no text")
    return WikiSplit(name, path, joined, words)


_ESCAPES = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))
_SPACE_BEFORE = re.compile(r" ([.,;:!?)\]])(?=\s|$)")
_SPACE_AFTER = re.compile(r"([(\[]) ")
_CONTRACTION = re.compile(r" ('t|n't|'s|'re|'ve|'m|'ll|'d)\b")
_HEADING = re.compile(r"^( (?:= )+)(.*?)((?: =)+ )$", re.M)


def detokenize(text: str) -> str:
    """WikiText's tokenisation undone so that it reads as ordinary prose (what a pretrained model saw): escaped
    numbers and hyphens rejoined, no space before punctuation or inside brackets, headings and `<unk>` kept."""
    for escaped, plain in _ESCAPES:
        text = text.replace(escaped, plain)
    text = _SPACE_BEFORE.sub(r"\1", text)
    text = _SPACE_AFTER.sub(r"\1", text)
    text = _CONTRACTION.sub(r"\1", text)
    text = re.sub(r'" (.*?) "', r'"\1"', text)
    return _HEADING.sub(lambda m: f"{m.group(1).strip()} {m.group(2)} {m.group(3).strip()}", text)


# --- generated data -----------------------------------------------------------------------------------------------

_SUBJECTS = ("the river", "the castle", "the species", "the album", "the army", "the ship", "the city", "the band",
             "the church", "the storm", "the railway", "the governor", "the company", "the novel", "the team")
_VERBS = ("was built in", "was recorded in", "reached", "was described in", "moved to", "was released in",
          "was destroyed in", "was founded in", "crossed", "was named after")
_OBJECTS = ("the northern valley", "the following year", "the eastern coast", "a small village", "the early period",
            "the old harbour", "the second season", "the royal court", "a <unk> forest", "the national park")
_TAILS = ("after a long war", "during the summer", "with great success", "despite heavy losses", "for the first time",
          "under the new king", "near the border", "before the end of the century")


def synthesize_wikitext(out: Path, seed: int = 0, articles: tuple[int, int, int] = (60, 12, 12)) -> list[Path]:
    """WikiText-format `wiki.{train,valid,test}.tokens` from a small grammar: titled articles with sections,
    `<unk>`, escaped numbers (`1 @,@ 200`, `3 @.@ 5`) and hyphens (`well @-@ known`). Regular enough that a tiny
    model learns it within a few hundred steps."""
    import random

    rng = random.Random(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def sentence() -> str:
        number = rng.choice([f"{rng.randint(1, 9)} @,@ {rng.randint(100, 999)}", f"{rng.randint(1, 9)} @.@ "
                             f"{rng.randint(1, 9)}", str(rng.randint(1800, 2010))])
        parts = [rng.choice(_SUBJECTS).capitalize(), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        if rng.random() < 0.5:
            parts.append(rng.choice(_TAILS))
        if rng.random() < 0.4:
            parts.append(f", a well @-@ known event of {number}")
        return " ".join(parts) + " . "

    paths = []
    for split, count in zip(SPLITS, articles, strict=True):
        lines = [" "]
        for _ in range(count):
            lines += [f" = {rng.choice(_SUBJECTS).title()} of {rng.choice(_OBJECTS).title()} = ", " "]
            for section in range(rng.randint(1, 3)):
                if section:
                    lines += [" ", f" = = {rng.choice(_TAILS).capitalize()} = = ", " "]
                for _ in range(rng.randint(1, 3)):
                    lines.append(" " + "".join(sentence() for _ in range(rng.randint(2, 5))))
            lines.append(" ")
        path = out / f"wiki.{split}.tokens"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
