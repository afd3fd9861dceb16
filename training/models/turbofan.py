"""Turbofan models over a window of normalised sensor readings (batch, window, features).

RUL models return remaining useful life in cycles; the autoencoder returns its reconstruction, and its anomaly score
is the per-window reconstruction error. Each model keeps its repeated layers in `blocks`, the unit the engine wraps
for activation checkpointing and sharding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from training.export import OnnxSignature


class LSTMBlock(nn.Module):
    """One LSTM layer that returns only its output sequence, so blocks chain and checkpoint cleanly."""

    def __init__(self, n_in: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_in, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN has no bf16 LSTM primitive on CPUs without AMX/AVX512-BF16; keep the recurrence in fp32 there.
            with torch.autocast("cpu", enabled=False):
                return self.dropout(self.lstm(x.float())[0])
        return self.dropout(self.lstm(x)[0])


class RULHead(nn.Module):
    """Sequence features -> RUL in cycles. The MLP predicts a fraction of the cap; scaling here keeps exported
    models in cycles."""

    def __init__(self, width: int, rul_cap: float, pool: str) -> None:
        super().__init__()
        self.rul_cap, self.pool = rul_cap, pool
        layers = [nn.LayerNorm(width)] if pool == "mean" else [nn.Linear(width, width), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summary = x.mean(dim=1) if self.pool == "mean" else x[:, -1]
        return self.mlp(summary).squeeze(-1) * self.rul_cap


class SequentialModel(nn.Module):
    """A model that is a chain of single-tensor stages, so pipeline parallelism can cut it anywhere."""

    def stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def pipeline_stages(self) -> nn.Sequential:
        return nn.Sequential(*self.stages())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return x


class MemberStack(nn.Module):
    """The same layer once per ensemble member, with members on the last axis (so pipeline micro-batches still split
    the batch axis): the first layer gives every member the shared sensor window, later layers give member m its own
    slice `x[..., m]`. Outputs are stacked on a new last axis."""

    def __init__(self, members: list[nn.Module], shared_input: bool) -> None:
        super().__init__()
        self.members, self.shared_input = nn.ModuleList(members), shared_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x if self.shared_input else x[..., m])
                            for m, member in enumerate(self.members)], dim=-1)


class EnsembleHead(MemberStack):
    """One RUL head per member. Training returns every member's RUL (batch, members) so each member fits the target
    on its own (independent errors are what averaging cancels); evaluation, export and serving get the mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_member = super().forward(x)
        return per_member if self.training else per_member.mean(dim=-1)


class TurbofanLSTM(SequentialModel):
    """Stacked LSTM over the window, RUL from the last step. `members` > 1 makes it a deep ensemble of that many
    independently initialised LSTMs in one module (same batches, own losses, averaged predictions): on FD001 the test
    RMSE of single models moves by about 2 cycles between seeds with the same validation RMSE, and averaging removes
    much of that spread."""

    def __init__(self, n_features: int, hidden: int = 64, layers: int = 2, dropout: float = 0.1,
                 rul_cap: float = 125.0, window: int = 30, members: int = 1) -> None:
        super().__init__()
        self.rul_cap, self.window = rul_cap, window

        def layer(i: int) -> nn.Module:
            return LSTMBlock(n_features if i == 0 else hidden, hidden, dropout)

        if members == 1:
            self.blocks = nn.ModuleList(layer(i) for i in range(layers))
            self.head = RULHead(hidden, rul_cap, pool="last")
        else:
            self.blocks = nn.ModuleList(MemberStack([layer(i) for _ in range(members)], shared_input=i == 0)
                                        for i in range(layers))
            self.head = EnsembleHead([RULHead(hidden, rul_cap, pool="last") for _ in range(members)],
                                     shared_input=False)

    def stages(self) -> list[nn.Module]:
        return [*self.blocks, self.head]


class EncoderBlock(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout, batch_first=True,
                                                norm_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class SensorEmbedding(nn.Module):
    """Linear projection of each cycle's sensors plus a fixed sinusoidal position code."""

    def __init__(self, n_features: int, d_model: int, window: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n_features, d_model)
        position = torch.arange(window).unsqueeze(1)
        freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        encoding = torch.zeros(window, d_model)
        encoding[:, 0::2], encoding[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
        self.register_buffer("position", encoding, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + self.position[: x.shape[1]]


class TurbofanTransformer(SequentialModel):
    def __init__(self, n_features: int, d_model: int = 64, heads: int = 4, layers: int = 2, dropout: float = 0.1,
                 rul_cap: float = 125.0, window: int = 30) -> None:
        super().__init__()
        self.rul_cap, self.window = rul_cap, window
        self.embed = SensorEmbedding(n_features, d_model, window)
        self.blocks = nn.ModuleList(EncoderBlock(d_model, heads, dropout) for _ in range(layers))
        self.head = RULHead(d_model, rul_cap, pool="mean")

    def stages(self) -> list[nn.Module]:
        return [self.embed, *self.blocks, self.head]


class TurbofanAutoencoder(nn.Module):
    """LSTM encoder-decoder trained on healthy windows; worn engines reconstruct poorly."""

    def __init__(self, n_features: int, hidden: int = 32, dropout: float = 0.0, window: int = 30) -> None:
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList([LSTMBlock(n_features, hidden, dropout), LSTMBlock(hidden, hidden, dropout)])
        self.out = nn.Linear(hidden, n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = self.blocks[0](x)[:, -1:]
        return self.out(self.blocks[1](code.expand(-1, x.shape[1], -1)))

    @staticmethod
    def anomaly_score(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        return ((x - reconstruction) ** 2).mean(dim=(1, 2))


ARCHS = {"lstm": TurbofanLSTM, "transformer": TurbofanTransformer, "lstm_autoencoder": TurbofanAutoencoder}


def build(config: dict[str, Any]) -> nn.Module:
    return ARCHS[config["arch"]](**{k: v for k, v in config.items() if k != "arch"})


class WindowSignature(OnnxSignature):
    def __init__(self, module: nn.Module, window: int, n_features: int) -> None:
        super().__init__(module, ["window"], {"window": {0: "batch"}, "output": {0: "batch"}}, "output")
        self.window, self.n_features = window, n_features

    def example(self, batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, self.window, self.n_features, generator=generator),)


def onnx_signature(manifest, model: nn.Module) -> OnnxSignature:
    return WindowSignature(model, manifest.model["window"], manifest.model["n_features"])
