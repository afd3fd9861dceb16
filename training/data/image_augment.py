"""Augmentation of whole image batches as tensor operations (on the batch's device: the GPU when there is one),
never per image in Python. Each takes and returns a float batch (N, C, H, W) and a torch.Generator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

KINDS = ("crop", "flip", "rotate", "cutout")


@dataclass(frozen=True)
class Augment:
    """Which augmentations, at what strength (1.0: crop padding 4 px, rotation up to 10 degrees, cutout 8x8)."""

    kinds: tuple[str, ...] = ("crop", "flip")
    strength: float = 1.0

    @classmethod
    def parse(cls, text: str | None, strength: float = 1.0) -> Augment:
        if text is None or text.strip() in ("", "none"):
            return cls((), strength)
        kinds = KINDS if text.strip() == "all" else tuple(k.strip() for k in text.split(",") if k.strip())
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"--augment: unknown {', '.join(unknown)}; choose from {', '.join(KINDS)}, all or none")
        return cls(tuple(k for k in KINDS if k in kinds), strength)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The batch augmented, in the memory layout it came in: the crop's indexing returns channels-first, and a
        channels-last batch turned channels-first runs the whole network channels-first (oneDNN's slow layout)
        wherever the weights are channels-first too, as the strategies that shard flat parameters keep them."""
        channels_last = images.is_contiguous(memory_format=torch.channels_last)
        if "crop" in self.kinds:
            images = random_crop(images, max(1, round(4 * self.strength)), generator)
        if "flip" in self.kinds:
            images = random_flip(images, generator)
        if "rotate" in self.kinds:
            images = random_rotate(images, 10.0 * self.strength, generator)
        if "cutout" in self.kinds:
            images = cutout(images, max(1, round(8 * self.strength)), generator)
        return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device="cpu" if generator is None else generator.device).to(device)


def random_crop(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad by `pad` pixels (reflected) and cut a random HxW window per image: a random translation."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy = (_uniform(n, generator, images.device) * (2 * pad + 1)).long().clamp(max=2 * pad)
    dx = (_uniform(n, generator, images.device) * (2 * pad + 1)).long().clamp(max=2 * pad)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]  # (n, 1, 1, w)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = _uniform(len(images), generator, images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def random_rotate(images: torch.Tensor, max_degrees: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each image by up to +-max_degrees about its centre (bilinear, borders reflected)."""
    angle = (_uniform(len(images), generator, images.device) * 2 - 1) * math.radians(max_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero (the mean, after normalisation) one size x size square per image, centred anywhere in it."""
    n, _, h, w = images.shape
    cy = (_uniform(n, generator, images.device) * h).long()[:, None, None]
    cx = (_uniform(n, generator, images.device) * w).long()[:, None, None]
    ys = torch.arange(h, device=images.device)[None, :, None]
    xs = torch.arange(w, device=images.device)[None, None, :]
    hole = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)
    return images.masked_fill(hole[:, None], 0.0)
