"""Image classifiers for 32x32 inputs (batch, 3, 32, 32), normalised with the training split's statistics.

- `FastNet`: the default. The cifar10-airbench family's shape (a fixed patch-whitening first layer, conv-BatchNorm-GELU
  groups with max pooling between stages, a scaled linear head), narrower, for accuracy per second of training on a CPU.
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

from training.export import OnnxSignature


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


class PatchWhitening(nn.Module):
    """A 2x2 convolution (no padding: 32x32 -> 31x31) whose filters whiten the training images' 2x2 patches, each
    eigen-direction twice with both signs, as airbench's first layer: the network starts from decorrelated inputs.
    The filters are a buffer set once from the data by `fit` (they travel in the state dict, nothing trains them);
    the bias learns."""

    def __init__(self, channels: int = 3, size: int = 2) -> None:
        super().__init__()
        self.size, self.dims = size, channels * size * size
        self.register_buffer("weight", torch.zeros(2 * self.dims, channels, size, size))
        self.bias = nn.Parameter(torch.zeros(2 * self.dims))

    @property
    def out_channels(self) -> int:
        return 2 * self.dims

    @torch.no_grad()
    def fit(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """images: normalised float (N, C, H, W), a few thousand are plenty."""
        patches = F.unfold(images.float(), self.size).transpose(1, 2).reshape(-1, self.dims)
        eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(patches.T.double()))
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp(min=0) + eps)[:, None]).float()
        filters = filters.reshape(self.dims, *self.weight.shape[1:])
        self.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class FastNet(nn.Module):
    HEAD = "head"

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), num_classes: int = 10, scale: float = 1 / 8,
                 stem: str = "conv", **_: Any) -> None:
        super().__init__()
        # "conv": the first layer learns (checkpoints from before the whitening stem); "whiten": PatchWhitening
        if stem == "whiten":
            whiten = PatchWhitening()
            self.stem, first = nn.Sequential(whiten, nn.GELU()), whiten.out_channels
        else:
            self.stem, first = nn.Sequential(*conv_bn(3, widths[0])), widths[0]
        self.blocks = nn.ModuleList(ConvGroup(a, b) for a, b in zip((first, *widths[:-1]), widths, strict=True))
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.scale = scale  # a small logit scale, as airbench: the head learns fast without overconfident logits

    def fit_to_data(self, images: torch.Tensor) -> None:
        """Set what is computed from the training images rather than learned (the whitening filters)."""
        if isinstance(self.stem[0], PatchWhitening):
            self.stem[0].fit(images)

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


class _Stages(list):
    """torchvision's four stages as a model's `blocks` (what the backends shard or checkpoint one by one), without
    registering them a second time (a ModuleList here saved every stage twice and, checkpointed, wrapped copies that
    forward never ran): replacing blocks[i] replaces net.layer{i+1}."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__([net.layer1, net.layer2, net.layer3, net.layer4])
        self.net = net

    def __setitem__(self, index: int, module: nn.Module) -> None:
        super().__setitem__(index, module)
        setattr(self.net, f"layer{index + 1}", module)


class TorchvisionResNet18(nn.Module):
    """torchvision's ResNet-18 as it is (ImageNet stem), so ImageNet weights load without renaming."""

    HEAD = "net.fc"

    def __init__(self, num_classes: int = 10, **_: Any) -> None:
        super().__init__()
        from torchvision.models import resnet18

        self.net = resnet18(num_classes=num_classes)
        self.blocks = _Stages(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def translate_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k if k.startswith("net.") else f"net.{k}": v for k, v in state.items()}


def translate(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move each image by (dy, dx) pixels, the uncovered border filled by reflection."""
    pad = max(abs(dy), abs(dx))
    h, w = images.shape[2:]
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    return padded[:, :, pad - dy:pad - dy + h, pad - dx:pad - dx + w]


class ViewAveraged(nn.Module):
    """The model's logits averaged over views of each image: the image and its mirror image, and with `shift` both
    also moved by `shift` pixels diagonally each way (6 views). Evaluation, the exported ONNX graph and the torch
    serving runtime all run this one module, so every runtime serves what evaluation measured."""

    def __init__(self, model: nn.Module, shift: int = 0) -> None:
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        views = [images, images.flip(3)]
        if self.shift:
            views += [translate(view, d, d) for view in views for d in (self.shift, -self.shift)]
        return sum(self.model(view) for view in views) / len(views)


def view_averaged(model: nn.Module, preprocessing: dict[str, Any]) -> nn.Module:
    """`model` as the checkpoint's preprocessing says to predict with: flip (and shift) averaged, or alone."""
    if not preprocessing.get("tta"):
        return model
    return ViewAveraged(model, int(preprocessing.get("tta_shift", 0))).eval()


ARCHS = {"fastnet": FastNet, "resnet20": CifarResNet, "resnet56": CifarResNet, "resnet18": TorchvisionResNet18}


def image_model_config(arch: str, num_classes: int, width: int | None = None) -> dict[str, Any]:
    if arch not in ARCHS:
        raise ValueError(f"unknown image model {arch!r}; choose {', '.join(ARCHS)}")
    config: dict[str, Any] = {"arch": arch, "num_classes": num_classes}
    if arch == "fastnet":
        base = width or 64
        config["widths"] = [base, 2 * base, 4 * base]
        config["stem"] = "whiten"
    elif arch.startswith("resnet") and arch != "resnet18":
        config["depth"] = int(arch[len("resnet"):])
    return config


def build(config: dict[str, Any]) -> nn.Module:
    kwargs = {k: v for k, v in config.items() if k != "arch"}
    if "widths" in kwargs:
        kwargs["widths"] = tuple(kwargs["widths"])
    return ARCHS[config["arch"]](**kwargs)


class ImageSignature(OnnxSignature):
    def __init__(self, module: nn.Module, size: int) -> None:
        super().__init__(module, ["image"], {"image": {0: "batch"}, "logits": {0: "batch"}}, "logits")
        self.size = size

    def example(self, batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, 3, self.size, self.size, generator=generator),)


def onnx_signature(manifest, model: nn.Module) -> OnnxSignature:
    module = view_averaged(model, manifest.preprocessing)  # the averaging inside the graph
    return ImageSignature(module, int(manifest.preprocessing["image_size"]))
