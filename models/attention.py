"""Attention networks for lymph-node segmentation (issue #18): a 3D Attention U-Net and an SNet-like 2.5D
network, plain `torch.nn.Module`s built from JSON-able keyword arguments, so lnrt exports them as it does
any class (`lnrt export torch OUT --class lnrt.models.attention:SNet25D --kwargs '{"in_channels": 15}'
--weights W.safetensors`).

Why attention for nodes. A cervical node is a small soft-tissue ovoid among structures of the same density
(muscle, glands, unenhanced vessels); what tells it apart is where it lies (in the fat planes along the
jugular chain) and its shape along z. Attention lets coarse context decide which fine features the
decoder uses (attention gates) and lets a pixel see a whole row or column of the slice in one layer
(axial self-attention), which a stack of 3x3 convolutions reaches only at depth.

- `AttentionUNet3D`: Oktay et al. 2018, "Attention U-Net: Learning Where to Look for the Pancreas"
  (MIDL; arXiv:1804.03999). A 3D U-Net whose skip connections pass through additive attention gates: the
  gating signal g is the coarser decoder level, the skip x is brought to g's grid by a strided conv
  (kernel = stride = the level's down-sampling, Oktay's "W_x"), g by a 1x1x1 conv ("W_g"); ReLU of their
  sum, a 1x1x1 conv to one channel ("psi"), a sigmoid, and the coefficients are upsampled back to the
  skip's grid with a fixed scale factor (ONNX Resize with constant scales: no data-dependent shapes) and
  multiply the skip. Input (B, C, z, y, x), output (B, K, z, y, x) logits.
- `SNet25D`: an SNet-like 2.5D network after Al Hasan et al. (as named in issue #18): a 2D encoder-decoder
  on (B, 2k + 1, y, x), the axial slice and its k neighbours above and below as channels (default k = 7:
  15 channels; `in_channels=1` makes it a plain 2D model), with
  * attention gates on the skips (as above, in 2D);
  * a dense atrous spatial pyramid pooling block at the bottleneck: Yang et al. 2018, "DenseASPP for
    Semantic Segmentation in Street Scenes" (CVPR). Dilated 3x3 convolutions with rates 3, 6, 9, 12, each
    branch reading the concatenation of the block's input and every earlier branch's output (1x1
    bottleneck, then the dilated conv), the concatenation of all fused back by a 1x1 conv: a dense range
    of receptive fields rather than ASPP's four separate ones;
  * an axial self-attention block after it: Ho et al. 2019, "Axial Attention in Multidimensional
    Transformers" (arXiv:1912.12180), Wang et al. 2020, "Axial-DeepLab: Stand-Alone Axial-Attention for
    Panoptic Segmentation" (ECCV). Multi-head self-attention along the height axis, then along the width
    axis, each with Q, K, V from 1x1 convs, softmax over the axis, written as MatMuls (Q K^T, then
    attention V), a 1x1 output conv and a residual. Its cost is O(h w (h + w)) instead of O((h w)^2).
    Axial-DeepLab's relative positional terms are left out on purpose: learned per-offset tables fix the
    in-plane size in the weights, and the position the attention needs is already in the convolutional
    features (zero padding makes them position-aware). The exported graph has a static in-plane size per
    patch and a dynamic batch (reshapes use -1 for the batch-like axis only).
  Output (B, K, y, x) logits for the centre slice.

Both use LeakyReLU(0.01) and `norm` "instance" (affine InstanceNorm, nnU-Net's choice), "batch" (folds into
the convolutions at export) or "none". The defaults are small enough for a CPU: see `count_parameters`.
Patch sizes must be multiples of `divisor`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

NORMS = ("instance", "batch", "none")


def _tup(v, n: int) -> tuple:
    return tuple(int(a) for a in v) if isinstance(v, (list, tuple)) else (int(v),) * n


def _conv(dim: int):
    return nn.Conv3d if dim == 3 else nn.Conv2d


def _norm(kind: str, ch: int, dim: int) -> nn.Module:
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {kind!r}")
    if kind == "batch":
        return (nn.BatchNorm3d if dim == 3 else nn.BatchNorm2d)(ch)
    if kind == "instance":
        return (nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d)(ch, affine=True)
    return nn.Identity()


def conv_norm_act(cin: int, cout: int, dim: int, norm: str, kernel=3, stride=1, dilation=1) -> nn.Sequential:
    k = _tup(kernel, dim)
    d = _tup(dilation, dim)
    return nn.Sequential(_conv(dim)(cin, cout, k, _tup(stride, dim), [dd * (kk // 2) for kk, dd in zip(k, d)],
                                    dilation=d, bias=norm == "none"),
                         _norm(norm, cout, dim), nn.LeakyReLU(0.01, inplace=True))


class ConvBlock(nn.Sequential):
    """`n` conv-norm-LeakyReLU layers; the first one strides."""

    def __init__(self, cin: int, cout: int, dim: int, norm: str, n: int = 2, stride=1):
        super().__init__(*[conv_norm_act(cin if i == 0 else cout, cout, dim, norm, 3, stride if i == 0 else 1)
                           for i in range(n)])


class AttentionGate(nn.Module):
    """Oktay et al.'s additive attention gate: x * upsample(sigmoid(psi(relu(W_x x + W_g g)))).

    `x` is the skip (fine grid), `g` the gating signal on the grid `scale` times coarser per axis. W_x
    is a conv with kernel = stride = `scale`, W_g and psi are 1x1(x1) convs; the coefficients go back
    to x's grid by interpolation with the constant `scale` (`mode` "linear": trilinear/bilinear, or
    "nearest")."""

    def __init__(self, x_channels: int, g_channels: int, inter_channels: int, scale, dim: int = 3,
                 mode: str = "linear"):
        super().__init__()
        if mode not in ("linear", "nearest"):
            raise ValueError(f"attention upsampling must be linear or nearest, got {mode!r}")
        conv = _conv(dim)
        self.scale = _tup(scale, dim)
        self.theta = conv(x_channels, inter_channels, self.scale, self.scale, bias=False)  # W_x
        self.phi = conv(g_channels, inter_channels, 1, bias=True)  # W_g
        self.psi = conv(inter_channels, 1, 1, bias=True)
        self.mode = ("trilinear" if dim == 3 else "bilinear") if mode == "linear" else "nearest"

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.psi(F.relu(self.theta(x) + self.phi(g))))
        if any(s != 1 for s in self.scale):
            kw = {"align_corners": False} if self.mode != "nearest" else {}
            a = F.interpolate(a, scale_factor=[float(s) for s in self.scale], mode=self.mode, **kw)
        return a

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * self.coefficients(x, g)


class _GatedUNet(nn.Module):
    """The encoder, the gated skips and the decoder shared by both networks (`dim` 3 or 2)."""

    def __init__(self, dim: int, in_channels: int, num_classes: int, features, strides, norm: str,
                 n_conv: int, gate_upsampling: str):
        super().__init__()
        features = [int(f) for f in features]
        strides = [_tup(s, dim) for s in strides]
        if len(strides) != len(features) or len(features) < 2:
            raise ValueError("features and strides need one entry per stage (at least two stages)")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.dim, self.features, self.strides = dim, tuple(features), tuple(strides)
        conv_t = nn.ConvTranspose3d if dim == 3 else nn.ConvTranspose2d
        self.encoder = nn.ModuleList()
        cin = int(in_channels)
        for f, s in zip(features, strides):
            self.encoder.append(ConvBlock(cin, f, dim, norm, n_conv, s))
            cin = f
        self.gates, self.up, self.decoder = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(len(features) - 1, 0, -1):
            fine, coarse, s = features[i - 1], features[i], strides[i]
            self.gates.append(AttentionGate(fine, coarse, max(fine // 2, 1), s, dim, gate_upsampling))
            self.up.append(conv_t(coarse, fine, s, s, bias=False))
            self.decoder.append(ConvBlock(2 * fine, fine, dim, norm, n_conv))
        self.head = _conv(dim)(features[0], int(num_classes), 1)

    @property
    def divisor(self) -> tuple:
        out = [1] * self.dim
        for s in self.strides:
            out = [o * v for o, v in zip(out, s)]
        return tuple(out)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = self.bottleneck(skips.pop())
        for gate, up, dec in zip(self.gates, self.up, self.decoder):
            skip = skips.pop()
            x = dec(torch.cat([up(x), gate(skip, x)], dim=1))  # gated by the coarser decoder level
        return self.head(x)


class AttentionUNet3D(_GatedUNet):
    """3D U-Net with additive attention gates on the skips (Oktay et al. 2018).

    Keyword arguments (all JSON-able): `in_channels` (1), `num_classes` (2), `features` per stage
    ((8, 16, 32, 64)), `strides` per stage (((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)): patches must
    be multiples of (4, 8, 8)), `norm` ("instance" | "batch" | "none"), `n_conv` per block (2),
    `gate_upsampling` ("linear": trilinear, or "nearest"). (B, C, z, y, x) -> (B, K, z, y, x) logits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, features=(8, 16, 32, 64),
                 strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)), norm: str = "instance", n_conv: int = 2,
                 gate_upsampling: str = "linear"):
        super().__init__(3, in_channels, num_classes, features, strides, norm, n_conv, gate_upsampling)


class DenseASPP(nn.Module):
    """Densely connected atrous spatial pyramid pooling (Yang et al. 2018), 2D.

    Branch i reads the concatenation of the input and branches 0..i-1, reduces it with a 1x1 conv to
    `2 * growth` channels and applies a 3x3 conv of dilation `rates[i]` giving `growth` channels; the
    concatenation of the input and every branch is fused back to `channels` by a 1x1 conv."""

    def __init__(self, channels: int, growth: int, rates=(3, 6, 9, 12), norm: str = "instance"):
        super().__init__()
        self.branches = nn.ModuleList()
        cin = channels
        for r in rates:
            self.branches.append(nn.Sequential(conv_norm_act(cin, 2 * growth, 2, norm, 1),
                                               conv_norm_act(2 * growth, growth, 2, norm, 3, dilation=int(r))))
            cin += growth
        self.fuse = conv_norm_act(cin, channels, 2, norm, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for branch in self.branches:
            feats.append(branch(torch.cat(feats, dim=1)))
        return self.fuse(torch.cat(feats, dim=1))


class AxialAttention(nn.Module):
    """Multi-head self-attention along one axis of a (B, C, H, W) map ("height" or "width").

    Q, K, V come from 1x1 convs; for every column (height) or row (width) the heads attend over that
    axis: softmax(Q K^T / sqrt(d)) V as two batched MatMuls. Shapes: Q (B, L', heads, L, d) with L the
    attended axis and L' the other one, so the reshapes and transposes are static but for the batch."""

    def __init__(self, channels: int, heads: int = 4, axis: str = "height"):
        super().__init__()
        if axis not in ("height", "width"):
            raise ValueError(f"axis must be height or width, got {axis!r}")
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be a multiple of heads ({heads})")
        self.heads, self.d, self.axis = heads, channels // heads, axis
        self.q = nn.Conv2d(channels, channels, 1, bias=False)
        self.k = nn.Conv2d(channels, channels, 1, bias=False)
        self.v = nn.Conv2d(channels, channels, 1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1], x.shape[2], x.shape[3]
        nh, d = self.heads, self.d
        # (B, heads, d, H, W) -> (B, other axis, heads, attended axis, d)
        perm = (0, 4, 1, 3, 2) if self.axis == "height" else (0, 3, 1, 4, 2)
        q = self.q(x).reshape(-1, nh, d, h, w).permute(*perm) * (d ** -0.5)
        k = self.k(x).reshape(-1, nh, d, h, w).permute(*perm)
        v = self.v(x).reshape(-1, nh, d, h, w).permute(*perm)
        attn = torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1)
        y = torch.matmul(attn, v)  # (B, other, heads, attended, d)
        back = (0, 2, 4, 3, 1) if self.axis == "height" else (0, 2, 4, 1, 3)
        y = y.permute(*back).reshape(-1, c, h, w)
        return self.out(y)


class AxialBlock(nn.Module):
    """Height attention then width attention, each with a residual and a norm (Axial-DeepLab order)."""

    def __init__(self, channels: int, heads: int = 4, norm: str = "instance"):
        super().__init__()
        self.height = AxialAttention(channels, heads, "height")
        self.width = AxialAttention(channels, heads, "width")
        self.norm_h = _norm(norm, channels, 2)
        self.norm_w = _norm(norm, channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_h(x + self.height(x))
        return self.norm_w(x + self.width(x))


class SNet25D(_GatedUNet):
    """SNet-like 2.5D network: 2D encoder-decoder with attention-gated skips, DenseASPP and axial
    self-attention at the bottleneck (see the module docstring).

    Keyword arguments (all JSON-able): `in_channels` (15: 2k + 1 slices with k = 7; 1 for a plain 2D
    model), `num_classes` (2), `features` per stage ((16, 32, 48, 64)), `strides` per stage
    ((1, 2, 2, 2): in-plane patches must be multiples of 8), `norm` ("instance" | "batch" | "none"),
    `n_conv` (2), `aspp_rates` ((3, 6, 9, 12)), `aspp_growth` (16), `heads` (4), `gate_upsampling`
    ("linear": bilinear, or "nearest"). (B, 2k + 1, y, x) -> (B, K, y, x) logits."""

    def __init__(self, in_channels: int = 15, num_classes: int = 2, features=(16, 32, 48, 64),
                 strides=(1, 2, 2, 2), norm: str = "instance", n_conv: int = 2, aspp_rates=(3, 6, 9, 12),
                 aspp_growth: int = 16, heads: int = 4, gate_upsampling: str = "linear"):
        super().__init__(2, in_channels, num_classes, features, strides, norm, n_conv, gate_upsampling)
        bottom = int(features[-1])
        self.aspp = DenseASPP(bottom, int(aspp_growth), tuple(int(r) for r in aspp_rates), norm)
        self.axial = AxialBlock(bottom, int(heads), norm)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return self.axial(self.aspp(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
