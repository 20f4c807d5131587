"""A 3D U-Net family defined by one frozen configuration (torch).

`UNetConfig` can express nnU-Net's PlainConvUNet shapes (stages, features, kernel and stride per stage,
convolutions per stage, normalization), and `UNet` builds the network from it. The default edge
configuration uses batch normalization, which folds into the convolutions at ONNX export (eval mode),
so CPU and INT8 engines run plain conv chains (docs/ARCHITECTURE.md); InstanceNorm remains available for imported
nnU-Net models. Deep supervision heads exist only in training mode and are never exported.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 1
    num_classes: int = 2
    features: tuple = (8, 16, 32, 64)
    kernel_sizes: tuple = ((3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    strides: tuple = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2))
    n_conv_per_stage: tuple = (2, 2, 2, 2)
    n_conv_per_stage_decoder: tuple = (2, 2, 2)
    norm: str = "batch"  # batch | instance | none
    deep_supervision: bool = False

    def __post_init__(self):
        n = len(self.features)
        if not (len(self.kernel_sizes) == len(self.strides) == len(self.n_conv_per_stage) == n):
            raise ValueError("features, kernel_sizes, strides and n_conv_per_stage need one entry per stage")
        if len(self.n_conv_per_stage_decoder) != n - 1:
            raise ValueError("n_conv_per_stage_decoder needs one entry per decoder stage (stages - 1)")
        if self.norm not in ("batch", "instance", "none"):
            raise ValueError(f"norm must be batch, instance or none, got {self.norm}")

    @property
    def divisor(self) -> tuple:
        """Patch sizes must be multiples of this (the product of the strides per axis)."""
        out = [1, 1, 1]
        for s in self.strides:
            out = [o * int(v) for o, v in zip(out, s)]
        return tuple(out)

    def to_dict(self) -> dict:
        return {k: (list(map(list, v)) if isinstance(v, tuple) and v and isinstance(v[0], tuple)
                    else list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        def tup(v):
            return tuple(tuple(x) if isinstance(x, list) else x for x in v)
        return cls(**{k: tup(v) if isinstance(v, list) else v for k, v in d.items()})


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(ch)
    if kind == "instance":
        return nn.InstanceNorm3d(ch, affine=True)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    def __init__(self, cin, cout, kernel, stride, n, norm):
        layers = []
        for i in range(n):
            layers += [nn.Conv3d(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1,
                                 [k // 2 for k in kernel], bias=norm == "none"),
                       _norm(norm, cout), nn.LeakyReLU(0.01, inplace=True)]
        super().__init__(*layers)


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig | dict):
        super().__init__()
        cfg = UNetConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
        self.cfg = cfg
        f = cfg.features
        self.encoder = nn.ModuleList()
        cin = cfg.in_channels
        for i, ch in enumerate(f):
            self.encoder.append(ConvBlock(cin, ch, cfg.kernel_sizes[i], cfg.strides[i],
                                          cfg.n_conv_per_stage[i], cfg.norm))
            cin = ch
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for j, i in enumerate(range(len(f) - 1, 0, -1)):
            self.up.append(nn.ConvTranspose3d(f[i], f[i - 1], cfg.strides[i], cfg.strides[i], bias=False))
            self.decoder.append(ConvBlock(2 * f[i - 1], f[i - 1], cfg.kernel_sizes[i - 1], 1,
                                          cfg.n_conv_per_stage_decoder[j], cfg.norm))
            self.heads.append(nn.Conv3d(f[i - 1], cfg.num_classes, 1))

    def forward(self, x: torch.Tensor):
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outs = []
        x = skips.pop()
        for up, dec, head in zip(self.up, self.decoder, self.heads):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
            outs.append(head(x))
        if self.cfg.deep_supervision and self.training:
            return outs[::-1]  # full resolution first
        return outs[-1]


EDGE = UNetConfig()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class PlansUNet(UNet):
    """`UNet` built from nnU-Net-style keyword arguments (input_channels, num_classes, deep_supervision,
    plus UNetConfig's fields), so an nnU-Net plans file can name it and nnU-Net's own predictor can run
    lnrt's networks: the peer benchmarks use this to run the same weights through both."""

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False, **config):
        cfg = dict(config, in_channels=input_channels, num_classes=num_classes,
                   deep_supervision=bool(deep_supervision))
        super().__init__(UNetConfig.from_dict(cfg))
