"""Convolution vs local self-attention: one CIFAR ResNet with a flag per stage (and the stem).

After Ramachandran et al., "Stand-alone self-attention in vision models" (NeurIPS 2019):

- `LocalSelfAttention2d` is a drop-in replacement for a 3x3 convolution. Every output pixel
  attends over its k x k neighbourhood (k = 7 by default), with queries, keys and values
  from 1x1 projections, several heads, and relative position embeddings split into a row
  half and a column half:

      y_ij = sum_{ab in N_k(i,j)} softmax_ab( q_ij . (k_ab + r_{a-i, b-j}) ) v_ab

  Neighbours outside the image are masked out of the softmax (not attended as zeros).
  Stride is an average pool after the layer, as in the paper.
- `ResNet` is a bottleneck ResNet adapted to 32x32 inputs (3x3 stem, no max pool,
  stages at 32, 16, 8 and 4 pixels). `attention_stages` swaps the 3x3 convs of chosen
  stages for local attention; `attention_stem` swaps the stem too. ResNet-26 is
  `blocks=(1, 2, 4, 1)`: 8 bottlenecks x 3 layers, plus the stem and the classifier.

The attention stem here is the simplest faithful version of the paper's: a pointwise
(1x1) lift of RGB to `stem_width` channels, then local self-attention, so no convolution
mixes space; the paper's spatially-aware value mixture is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cvexp.models.intermediates import take_indices
from cvexp.models.normalize import CIFAR10_MEAN, CIFAR10_STD, Normalize


class LocalSelfAttention2d(nn.Module):
    """Multi-head local self-attention: (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).

    Each of `num_heads` heads has `out_channels // num_heads` channels; half of a head's
    relative embedding encodes the row offset, half the column offset.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 7,
        num_heads: int = 8,
        stride: int = 1,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a centred window), got {kernel_size}.")
        if out_channels % num_heads or (out_channels // num_heads) % 2:
            raise ValueError(
                f"out_channels={out_channels} must split into {num_heads} heads of an even "
                "width (half for row offsets, half for column offsets)."
            )
        if stride < 1:
            raise ValueError(f"stride must be at least 1, got {stride}.")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.num_heads, self.stride = kernel_size, num_heads, stride
        self.head_dim = out_channels // num_heads
        self.qkv = nn.Conv2d(in_channels, 3 * out_channels, kernel_size=1, bias=qkv_bias)
        half = self.head_dim // 2
        self.rel_rows = nn.Parameter(torch.randn(num_heads, half, kernel_size) * half**-0.5)
        self.rel_cols = nn.Parameter(torch.randn(num_heads, half, kernel_size) * half**-0.5)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self._masks: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def relative_embeddings(self) -> torch.Tensor:
        """r for every offset of the window: (heads, head_dim, k*k), offset index a*k + b,
        the row half from `rel_rows[a]`, the column half from `rel_cols[b]`."""
        k = self.kernel_size
        rows = self.rel_rows[:, :, :, None].expand(-1, -1, k, k)  # (heads, d/2, k, k)
        cols = self.rel_cols[:, :, None, :].expand(-1, -1, k, k)  # (heads, d/2, k, k)
        return torch.cat([rows, cols], dim=1).flatten(2)  # (heads, d, k*k)

    def valid_neighbours(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(k*k, H, W) bool: whether offset (a, b) of pixel (i, j) lands inside the image."""
        key = (height, width, device)
        if key not in self._masks:
            k, p = self.kernel_size, self.kernel_size // 2
            offsets = torch.arange(k, device=device) - p
            rows = torch.arange(height, device=device)[None, :] + offsets[:, None]  # (k, H)
            cols = torch.arange(width, device=device)[None, :] + offsets[:, None]  # (k, W)
            row_ok = (rows >= 0) & (rows < height)
            col_ok = (cols >= 0) & (cols < width)
            mask = row_ok[:, None, :, None] & col_ok[None, :, None, :]  # (k, k, H, W)
            self._masks[key] = mask.reshape(k * k, height, width)
        return self._masks[key]

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> torch.Tensor:
        b, _, h, w = x.shape
        k, p = self.kernel_size, self.kernel_size // 2
        heads, d = self.num_heads, self.head_dim
        q, key, value = self.qkv(x).chunk(3, dim=1)  # each (B, C, H, W)
        q = q.reshape(b, heads, d, h, w)
        key = F.pad(key, (p, p, p, p)).reshape(b, heads, d, h + 2 * p, w + 2 * p)
        value = F.pad(value, (p, p, p, p)).reshape(b, heads, d, h + 2 * p, w + 2 * p)
        windows = [(dy, dx) for dy in range(k) for dx in range(k)]  # offset index dy*k + dx

        # q . r for every offset: one matmul; q . k per offset, over shifted views of the keys
        logits = torch.einsum("bhdyx,hdo->bhoyx", q, self.relative_embeddings())
        content = torch.stack(
            [(q * key[..., dy : dy + h, dx : dx + w]).sum(2) for dy, dx in windows], dim=2
        )  # (B, heads, k*k, H, W)
        logits = (logits + content).masked_fill(
            ~self.valid_neighbours(h, w, x.device), float("-inf")
        )
        attention = logits.softmax(dim=2)  # (B, heads, k*k, H, W), sums to 1 over the window

        out = torch.zeros_like(q)  # (B, heads, d, H, W)
        for o, (dy, dx) in enumerate(windows):
            out = out + attention[:, :, o : o + 1] * value[..., dy : dy + h, dx : dx + w]
        out = self.pool(out.reshape(b, self.out_channels, h, w))
        return (out, attention) if return_attention else out

    def uncounted_macs(self, height: int, width: int) -> int:
        """Multiply-accumulates per image that torch.utils.flop_counter does not see: q . k and
        the attention-weighted sum of v, each C_out x k^2 per pixel (elementwise ops). The
        1x1 projections and q . r are matmuls, which it counts."""
        return 2 * self.out_channels * self.kernel_size**2 * height * width

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"num_heads={self.num_heads}, stride={self.stride}"
        )


def spatial_layer(
    channels: int, *, stride: int, attention: bool, kernel_size: int, num_heads: int
) -> nn.Module:
    """The layer that mixes space in a bottleneck: a 3x3 conv, or local self-attention."""
    if attention:
        return LocalSelfAttention2d(
            channels, channels, kernel_size=kernel_size, num_heads=num_heads, stride=stride
        )
    return nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 conv or local attention (with the stride) -> 1x1 expand, plus shortcut."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        *,
        stride: int = 1,
        attention: bool = False,
        kernel_size: int = 7,
        num_heads: int = 8,
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)
        )
        self.spatial = nn.Sequential(
            spatial_layer(
                width,
                stride=stride,
                attention=attention,
                kernel_size=kernel_size,
                num_heads=num_heads,
            ),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        )
        self.expand = nn.Sequential(
            nn.Conv2d(width, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )
        nn.init.zeros_(self.expand[1].weight)  # each block starts as the identity
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.expand(self.spatial(self.reduce(x))) + self.shortcut(x))


class ResNet(nn.Module):
    """A bottleneck ResNet for 32x32 images; one flag per stage picks conv or local attention.

    Images (B, 3, 32, 32) in [0, 1] -> logits (B, num_classes); the net normalises itself.
    """

    def __init__(
        self,
        *,
        blocks: tuple[int, ...] = (1, 2, 4, 1),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        attention_stages: tuple[bool, ...] = (False, False, False, False),
        attention_stem: bool = False,
        stem_width: int = 64,
        kernel_size: int = 7,
        num_heads: int = 8,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        blocks, widths, attention_stages = tuple(blocks), tuple(widths), tuple(attention_stages)
        if not len(blocks) == len(widths) == len(attention_stages):
            raise ValueError(
                f"blocks {blocks}, widths {widths} and attention_stages {attention_stages} "
                "need one entry per stage."
            )
        self.num_classes = num_classes
        self.normalize = Normalize(CIFAR10_MEAN, CIFAR10_STD)
        if attention_stem:  # pointwise lift, then attention: no convolution mixes space
            self.stem = nn.Sequential(
                nn.Conv2d(3, stem_width, 1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(True),
                LocalSelfAttention2d(
                    stem_width, stem_width, kernel_size=kernel_size, num_heads=num_heads
                ),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, stem_width, 3, padding=1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(True),
            )
        stages, in_channels = [], stem_width
        for i, (count, width, attention) in enumerate(
            zip(blocks, widths, attention_stages, strict=True)
        ):
            layers = []
            for j in range(count):
                layers.append(
                    Bottleneck(
                        in_channels,
                        width,
                        stride=2 if i > 0 and j == 0 else 1,
                        attention=attention,
                        kernel_size=kernel_size,
                        num_heads=num_heads,
                    )
                )
                in_channels = width * Bottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_channels
        self.head = nn.Linear(in_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) in [0, 1] -> (B, C, 4, 4) feature map of the last stage."""
        return self.stages(self.stem(self.normalize(x)))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stem's output, then each bottleneck's, each (B, C, h, w)."""
        layers = [self.stem, *(block for stage in self.stages for block in stage)]
        wanted = set(take_indices(len(layers), indices))
        x = self.normalize(x)
        intermediates = []
        for i, layer in enumerate(layers):
            x = layer(x)
            if i in wanted:
                intermediates.append(x)  # (B, C, h, w)
        return intermediates if intermediates_only else (x, intermediates)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each local self-attention layer's weights (B, heads, k*k, H, W), in forward order;
        empty for the all-convolution ResNet."""
        layers = [m for m in self.modules() if isinstance(m, LocalSelfAttention2d)]
        weights: list[torch.Tensor] = []

        def record(
            layer: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor
        ) -> None:
            weights.append(layer.forward(inputs[0], return_attention=True)[1])  # no hooks again

        handles = [layer.register_forward_hook(record) for layer in layers]
        try:
            self.eval()(x)
        finally:
            for handle in handles:
                handle.remove()
        return weights

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, num_classes): global average pool, then a linear layer."""
        return self.head(features.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
