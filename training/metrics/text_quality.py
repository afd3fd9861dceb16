"""How varied generated text is: distinct-n (unique n-grams over all n-grams), the share of 4-grams that repeat an
earlier one in the same text, and how many words come before the text first falls into a repetition loop."""

from __future__ import annotations

from collections.abc import Sequence


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams = [gram for text in texts for gram in _ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_share(text: str, n: int = 4) -> float:
    grams = _ngrams(text.split(), n)
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams) if grams else 0.0


def words_before_loop(text: str, n: int = 4) -> int:
    """Words before the first n-gram that already occurred (the start of a loop); the whole length without one."""
    words = text.split()
    seen: set[tuple[str, ...]] = set()
    for i, gram in enumerate(_ngrams(words, n)):
        if gram in seen:
            return i
        seen.add(gram)
    return len(words)


def quality(texts: Sequence[str]) -> dict[str, float]:
    count = max(len(texts), 1)
    return {"distinct_1": round(distinct_n(texts, 1), 4), "distinct_2": round(distinct_n(texts, 2), 4),
            "repeated_4gram_share": round(sum(repeated_ngram_share(t) for t in texts) / count, 4),
            "words_before_loop": round(sum(words_before_loop(t) for t in texts) / count, 1)}
