"""Image classifiers for 32x32 inputs (batch, 3, 32, 32), normalised with the training split's statistics.

- `FastNet`: the default. The cifar10-airbench family's shape (conv-BatchNorm-GELU groups with max pooling between
  stages, a scaled linear head), narrower, for accuracy per second of training on a CPU.
- `CifarResNet`: He et al.'s CIFAR ResNets (3 stages of 16/32/64 channels, parameter-free option-A shortcuts);
  depth 20 and 56 load the pretrained state dicts of akamaster/pytorch_resnet_cifar10.
- torchvision's ResNet-18, for ImageNet-style transfer when a user has such weights.

Each keeps its repeated layers in `blocks` (the unit the engine checkpoints and shards) and names its classifier
`HEAD` (what `--freeze-epochs` trains alone).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]


class ConvGroup(nn.Module):
    """conv -> 2x2 max pool -> BN -> GELU -> conv -> BN -> GELU, with a residual around the second conv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Sequential(*conv_bn(c_out, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return x + self.conv2(x)


class FastNet(nn.Module):
    HEAD = "head"

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), num_classes: int = 10, scale: float = 1 / 8,
                 **_: Any) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, widths[0]))
        self.blocks = nn.ModuleList(ConvGroup(a, b) for a, b in zip((widths[0], *widths[:-1]), widths, strict=True))
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.scale = scale  # a small logit scale, as airbench: the head learns fast without overconfident logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(torch.amax(x, dim=(2, 3))) * self.scale


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.pad = (c_out - c_in) // 2 if stride != 1 or c_in != c_out else 0
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A: subsample and zero-pad the channels, no parameters."""
        if self.stride == 1 and not self.pad:
            return x
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    HEAD = "linear"

    def __init__(self, depth: int = 20, num_classes: int = 10, **_: Any) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), not {depth}")
        per_stage = (depth - 2) // 6
        self.per_stage = per_stage
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, c_in = [], 16
        for stage, c_out in enumerate((16, 32, 64)):
            for i in range(per_stage):
                blocks.append(BasicBlock(c_in, c_out, 2 if stage and i == 0 else 1))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for block in self.blocks:
            x = block(x)
        return self.linear(x.mean(dim=(2, 3)))

    def translate_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """He et al. / akamaster names (`layer2.1.conv1`) to this model's (`blocks.{n + 1}.conv1`)."""
        def rename(key: str) -> str:
            match = re.match(r"layer([123])\.(\d+)\.(.*)", key)
            if not match:
                return key
            stage, index, rest = int(match[1]) - 1, int(match[2]), match[3]
            return f"blocks.{stage * self.per_stage + index}.{rest}"
        return {rename(k): v for k, v in state.items()}


class TorchvisionResNet18(nn.Module):
    """torchvision's ResNet-18 as it is (ImageNet stem), so ImageNet weights load without renaming."""

    HEAD = "net.fc"

    def __init__(self, num_classes: int = 10, **_: Any) -> None:
        super().__init__()
        from torchvision.models import resnet18

        self.net = resnet18(num_classes=num_classes)
        self.blocks = nn.ModuleList([self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def translate_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k if k.startswith("net.") else f"net.{k}": v for k, v in state.items()}


ARCHS = {"fastnet": FastNet, "resnet20": CifarResNet, "resnet56": CifarResNet, "resnet18": TorchvisionResNet18}


def image_model_config(arch: str, num_classes: int, width: int | None = None) -> dict[str, Any]:
    if arch not in ARCHS:
        raise ValueError(f"unknown image model {arch!r}; choose {', '.join(ARCHS)}")
    config: dict[str, Any] = {"arch": arch, "num_classes": num_classes}
    if arch == "fastnet":
        base = width or 32
        config["widths"] = [base, 2 * base, 4 * base]
    elif arch.startswith("resnet") and arch != "resnet18":
        config["depth"] = int(arch[len("resnet"):])
    return config


def build_image_model(config: dict[str, Any]) -> nn.Module:
    kwargs = {k: v for k, v in config.items() if k != "arch"}
    if "widths" in kwargs:
        kwargs["widths"] = tuple(kwargs["widths"])
    return ARCHS[config["arch"]](**kwargs)
