"""Batches of variable-length token sequences: dynamic padding, and length buckets split across data-parallel ranks.

Padding every batch to its own longest member (dynamic padding) only pays off when members have similar lengths:
shuffle, sort within buckets of `bucket_batches` batches, cut into batches, shuffle the batches. Every rank draws the
same permutation (seed + epoch) and takes every world-th batch, so ranks stay in step with equal batch counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def pad_batch(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic padding: token ids and attention mask padded to the longest sequence of this batch only."""
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    return input_ids, mask


class BucketBatchSampler(Sampler[list[int]]):
    def __init__(self, lengths: Sequence[int], batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 bucket_batches: int = 50) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.bucket = seed, bucket_batches * batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.bucket):
            bucket = order[start:start + self.bucket]
            bucket = bucket[np.argsort(self.lengths[bucket], kind="stable")]
            # Whole batches only: a short last batch would give ranks different step counts.
            batches += [bucket[i:i + self.batch_size] for i in range(0, len(bucket) - self.batch_size + 1,
                                                                     self.batch_size)]
        rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank:usable:self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return (batch.tolist() for batch in self._batches())

    def __len__(self) -> int:
        return len(self._batches())
