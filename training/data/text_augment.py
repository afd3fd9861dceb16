"""Text augmentations that need no download, applied to token ids at batch time (a fresh draw every epoch).

- token deletion: drop each word piece with probability p (the model must not lean on any single word);
- adjacent swap: swap a few neighbouring word pieces (robustness to word order noise).
The first and last ids ([CLS] ... [SEP], <s> ... </s>) are never touched. Draws use torch's generator, so a resumed
run repeats them exactly.
"""

from __future__ import annotations

import torch

AUGMENTATIONS = ("delete", "swap")


def augment_ids(ids: list[int], kinds: tuple[str, ...], delete_p: float = 0.1, swap_fraction: float = 0.1) -> list[int]:
    if len(ids) <= 3 or not kinds:
        return ids
    first, body, last = ids[0], list(ids[1:-1]), ids[-1]
    if "delete" in kinds:
        keep = torch.rand(len(body)) >= delete_p
        kept = [token for token, k in zip(body, keep.tolist(), strict=True) if k]
        body = kept or body[:1]
    if "swap" in kinds and len(body) > 1:
        for i in torch.randint(0, len(body) - 1, (max(1, int(swap_fraction * len(body))),)).tolist():
            body[i], body[i + 1] = body[i + 1], body[i]
    return [first, *body, last]


def parse_augment(value: str | None) -> tuple[str, ...]:
    """`--augment delete,swap` (or `all`) -> the augmentation names; a clear error for unknown ones."""
    if not value:
        return ()
    names = AUGMENTATIONS if value == "all" else tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)} or all")
    return names
