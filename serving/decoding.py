"""Choosing each next token for one sequence, and turning its tokens into text that can be streamed.

The logits transforms are transformers' own processors (repetition penalty, temperature, top-k, top-p) plus OpenAI's
presence and frequency penalties, applied one sequence at a time so that requests decoded in one batch keep their own
settings. Sampling draws from the request's own seeded generator: the same request with the same seed gives the same
text. Log-probabilities are reported from the model's own distribution (before any penalty or temperature), as
OpenAI's API and vLLM report them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Dividing logits by a temperature this small overflows them to infinity; sampling that cold is greedy anyway.
GREEDY_BELOW = 0.01


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 64  # 0: score the prompt only (with `echo`)
    temperature: float = 1.0  # below GREEDY_BELOW: greedy
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per time a token was generated
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()  # besides the model's end tokens (a chat template's end of turn)
    seed: int | None = None
    logprobs: int | None = None  # report each generated token's log-probability and this many alternatives
    echo: bool = False  # report each prompt token's log-probability (and `logprobs` alternatives)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass(frozen=True)
class TokenLogprob:
    """A token with its log-probability under the model (None for a prompt's first token, which nothing precedes)
    and the most likely alternatives at its position, best first."""

    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()


def token_logprob(logits: torch.Tensor, token: int, alternatives: int) -> TokenLogprob:
    """`logits`: (vocab,) for the position `token` was chosen at."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top = ()
    if alternatives:
        values, ids = logprobs.topk(alternatives)
        top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, float(logprobs[token]), top)


def prompt_logprobs(logits: torch.Tensor, ids: list[int], alternatives: int) -> list[TokenLogprob]:
    """Each prompt token's log-probability given the tokens before it; `logits`: (len(ids), vocab), row i predicting
    token i + 1."""
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    chosen = logprobs.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1).tolist()
    tops: list[tuple[tuple[int, float], ...]] = [()] * (len(ids) - 1)
    if alternatives:
        values, top_ids = logprobs.topk(alternatives, dim=-1)
        tops = [tuple(zip(i, v, strict=True)) for i, v in zip(top_ids.tolist(), values.tolist(), strict=True)]
    return [TokenLogprob(ids[0], None), *(TokenLogprob(t, lp, top)
                                          for t, lp, top in zip(ids[1:], chosen, tops, strict=True))]


class TokenChooser:
    """Next-token choice for one sequence under its Decoding settings."""

    def __init__(self, decoding: Decoding) -> None:
        from transformers import (
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.decoding = decoding
        self.processors = []
        if decoding.repetition_penalty != 1.0:
            self.processors.append(RepetitionPenaltyLogitsProcessor(decoding.repetition_penalty))
        if not decoding.greedy:
            if decoding.temperature != 1.0:
                self.processors.append(TemperatureLogitsWarper(decoding.temperature))
            if decoding.top_k > 0:
                self.processors.append(TopKLogitsWarper(decoding.top_k))
            if decoding.top_p < 1.0:
                self.processors.append(TopPLogitsWarper(decoding.top_p))
        self.counts: torch.Tensor | None = None  # how often each token was generated, for OpenAI's penalties
        self.generator = torch.Generator()
        if decoding.seed is not None:
            self.generator.manual_seed(decoding.seed)
        else:
            self.generator.seed()

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor) -> int:
        """`logits`: (vocab,) for the next position; `seen`: the ids so far (prompt and generated)."""
        scores = logits.float().unsqueeze(0)
        if self.counts is not None:
            scores = scores - (self.decoding.frequency_penalty * self.counts
                               + self.decoding.presence_penalty * (self.counts > 0))
        for processor in self.processors:
            scores = processor(seen.unsqueeze(0), scores)
        if self.decoding.greedy:
            token = int(scores.argmax())
        else:
            probabilities = torch.softmax(scores[0], dim=-1)
            if not torch.isfinite(probabilities).all():  # logits that overflowed: take the most likely token
                token = int(logits.argmax())
            else:
                token = int(torch.multinomial(probabilities, 1, generator=self.generator))
        self._count(token, logits.shape[-1])
        return token

    def _count(self, token: int, vocab: int) -> None:
        if not (self.decoding.presence_penalty or self.decoding.frequency_penalty):
            return
        if self.counts is None:
            self.counts = torch.zeros(vocab)
        self.counts[token] += 1


class TextStream:
    """The generated text so far, released in pieces that are safe to show: nothing that may still turn out to be
    the start of a stop string, no half of a multi-byte character. Finds the stop strings."""

    def __init__(self, tokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text, self.released = "", 0
        self.stopped = False

    def add(self, token: int) -> str:
        """Take one more token; returns the newly released text (maybe empty)."""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for stop in self.stop:
            at = self.text.find(stop, max(0, self.released - len(stop)))
            if at >= 0:
                self.text, self.stopped = self.text[:at], True
                return self._release(len(self.text))
        safe = len(self.text) - self._held_back()
        return self._release(safe)

    def finish(self) -> str:
        return self._release(len(self.text))

    def _held_back(self) -> int:
        if self.text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its other bytes
            return 1
        return max((n for stop in self.stop for n in range(len(stop) - 1, 0, -1)
                    if self.text.endswith(stop[:n])), default=0)

    def _release(self, upto: int) -> str:
        piece = self.text[self.released:upto] if upto > self.released else ""
        self.released = max(self.released, upto)
        return piece
