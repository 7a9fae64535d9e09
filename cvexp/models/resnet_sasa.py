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

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cvexp.models.intermediates import take_indices
from cvexp.models.normalize import CIFAR10_MEAN, CIFAR10_STD, Normalize

# Query elements per chunk of images on the windowed path: with the chunk's keys, values and
# weights this stays in a core's cache across the 2 k^2 passes (2^19 floats = 2 MiB measured
# best on the 2-core CPU machine; 2^20 and more were 15-60% slower, 2^17 and less too).
CHUNK_ELEMENTS = 1 << 19


class LocalSelfAttention2d(nn.Module):
    """Multi-head local self-attention: (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).

    Each of `num_heads` heads has `out_channels // num_heads` channels; half of a head's
    relative embedding encodes the row offset, half the column offset.

    Two exact ways to compute the same thing, chosen by the size of the map:

    - a map of at most 2 k^2 pixels (8x8 for k = 7): dense attention, every pixel against
      every pixel of the map as matmuls, the scores outside each window masked (at most twice
      the window's scores, in a few large ops);
    - a larger map: `_WindowAttention`, which walks the k^2 offsets over "flat" padded maps,
      where each offset's neighbours of all pixels are one contiguous slice, chunk by chunk of
      images, with a hand-written backward. No k^2-times-larger unfolded copy is made.
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
        self._masks: dict[tuple[str, int, int, torch.device], torch.Tensor] = {}

    def no_weight_decay(self) -> set[str]:
        """The relative position embeddings: no weight decay, as timm's Swin and MaxViT treat
        their relative position tables (and ViTs their position embeddings)."""
        return {"rel_rows", "rel_cols"}

    def relative_embeddings(self) -> torch.Tensor:
        """r for every offset of the window: (heads, head_dim, k*k), offset index a*k + b,
        the row half from `rel_rows[a]`, the column half from `rel_cols[b]`."""
        k = self.kernel_size
        rows = self.rel_rows[:, :, :, None].expand(-1, -1, k, k)  # (heads, d/2, k, k)
        cols = self.rel_cols[:, :, None, :].expand(-1, -1, k, k)  # (heads, d/2, k, k)
        return torch.cat([rows, cols], dim=1).flatten(2)  # (heads, d, k*k)

    def valid_neighbours(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(k*k, H, W) bool: whether offset (a, b) of pixel (i, j) lands inside the image."""
        key = ("valid", height, width, device)
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

    def uses_dense_path(self, height: int, width: int) -> bool:
        """Whether a height x width map is small enough for dense attention (at most 2 k^2
        pixels: at most twice the window's scores per pixel)."""
        return height * width <= 2 * self.kernel_size**2

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> torch.Tensor:
        b, _, h, w = x.shape
        heads, d = self.num_heads, self.head_dim
        q, key, value = (t.reshape(b, heads, d, h, w) for t in self.qkv(x).chunk(3, dim=1))
        if self.uses_dense_path(h, w):
            out, attention = self._dense(q, key, value, return_attention=return_attention)
        else:
            out, attention = self._windowed(q, key, value)
        out = self.pool(out.reshape(b, self.out_channels, h, w))
        return (out, attention) if return_attention else out

    def _dense(
        self, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, return_attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every pixel scores every pixel of the (small) map; scores outside its window are
        masked. q, key, value (B, heads, d, H, W) -> out (B, heads, d, H, W) and, when asked,
        the window's weights (B, heads, k*k, H, W)."""
        b, heads, d, h, w = q.shape
        offset, inside = self._dense_tables(h, w, q.device)  # (P, P) each, P = H*W
        q, key, value = (t.flatten(3) for t in (q, key, value))  # (B, heads, d, P)
        qt = q.transpose(2, 3)  # (B, heads, P, d)
        relative = qt @ self.relative_embeddings()  # (B, heads, P, k*k): q_i . r_o
        logits = qt @ key + relative.gather(3, offset.expand(b, heads, -1, -1))  # (B, heads, P, P)
        weights = logits.masked_fill(~inside, float("-inf")).softmax(dim=3)  # (B, heads, P, P)
        out = (value @ weights.transpose(2, 3)).view(b, heads, d, h, w)
        if not return_attention:
            return out, None
        neighbour = self._masks[("neighbour", h, w, q.device)]  # (P, k*k)
        window = weights.gather(3, neighbour.expand(b, heads, -1, -1)).transpose(2, 3)
        window = window.reshape(b, heads, -1, h, w)  # (B, heads, k*k, H, W)
        return out, window.masked_fill(~self.valid_neighbours(h, w, q.device), 0.0)

    def _dense_tables(
        self, height: int, width: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For pixels i, j of the flattened map: the window offset index of j around i (P, P),
        clamped into the window, and whether j is inside i's window (P, P). Also caches each
        pixel's neighbour index per offset (P, k*k), clamped into the image."""
        key = ("offset", height, width, device)
        if key not in self._masks:
            k, p = self.kernel_size, self.kernel_size // 2
            ys = torch.arange(height, device=device).repeat_interleave(width)  # (P,)
            xs = torch.arange(width, device=device).repeat(height)  # (P,)
            dy = ys[None, :] - ys[:, None] + p  # (P, P): row offset index of j around i
            dx = xs[None, :] - xs[:, None] + p
            inside = (dy >= 0) & (dy < k) & (dx >= 0) & (dx < k)
            self._masks[key] = dy.clamp(0, k - 1) * k + dx.clamp(0, k - 1)
            self._masks[("inside", height, width, device)] = inside
            offsets = torch.arange(k, device=device) - p
            ny = (ys[:, None, None] + offsets[None, :, None]).clamp(0, height - 1)  # (P, k, 1)
            nx = (xs[:, None, None] + offsets[None, None, :]).clamp(0, width - 1)  # (P, 1, k)
            self._masks[("neighbour", height, width, device)] = (ny * width + nx).flatten(1)
        return self._masks[key], self._masks[("inside", height, width, device)]

    def _windowed(
        self, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The flat-map path. q, key, value (B, heads, d, H, W) -> out (B, heads, d, H, W),
        the window's weights (B, heads, k*k, H, W)."""
        b, heads, d, h, w = q.shape
        k, p = self.kernel_size, self.kernel_size // 2
        row = w + 2 * p  # every flat map has rows of this length
        q = F.pad(q, (0, 2 * p)).flatten(3)  # (B, heads, d, H*row)
        key = F.pad(key, (p, p, p, p + 1)).flatten(3)  # (B, heads, d, (H + 2p + 1)*row)
        value = F.pad(value, (p, p, p, p + 1)).flatten(3)
        mask_key = ("flat", h, w, q.device)
        if mask_key not in self._masks:  # the 2p extra columns: all True, to stay finite
            mask = torch.ones(k * k, h, row, dtype=torch.bool, device=q.device)
            mask[..., :w] = self.valid_neighbours(h, w, q.device)
            self._masks[mask_key] = mask.flatten(1)  # (k*k, H*row)
        # an exporter (torch.export, TorchScript's tracer, ONNX) cannot record the chunk loop
        # and in-place writes of the autograd.Function: it gets the same sums, out of place
        window_attention = _window_attention if _exporting() else _WindowAttention.apply
        # in the parameters' precision under autocast too (bf16 or fp16 mixed precision gives
        # q, k, v in half precision): the function's sums and softmax run in place, outside
        # autocast's casts, and autocast keeps a softmax in float32 as well
        relative = self.relative_embeddings()
        dtype = torch.promote_types(q.dtype, relative.dtype)
        with torch.autocast(q.device.type, enabled=False):
            out, attention = window_attention(
                q.to(dtype),
                key.to(dtype),
                value.to(dtype),
                relative.to(dtype),
                self._masks[mask_key],
                k,
                w,
            )
        out = out.view(b, heads, d, h, row)[..., :w]
        return out, attention.view(b, heads, k * k, h, row)[..., :w]

    def uncounted_macs(self, height: int, width: int) -> int:
        """Multiply-accumulates per image that torch.utils.flop_counter does not see: on the
        windowed path, q . k and the attention-weighted sum of v, each C_out x k^2 per pixel
        (elementwise ops). The 1x1 projections and q . r are matmuls, which it counts; so is all
        of the dense path (small maps), which scores H*W pixels per pixel instead of k^2."""
        if self.uses_dense_path(height, width):
            return 0
        return 2 * self.out_channels * self.kernel_size**2 * height * width

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"num_heads={self.num_heads}, stride={self.stride}"
        )


def _image_chunks(q: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Chunks of whole images of q (B, heads, d, L) of about CHUNK_ELEMENTS elements: yields
    (slice of images, scratch (n, heads, d, L), scratch (n, heads, L)), buffers reused."""
    b, heads, _, length = q.shape
    n = max(1, min(b, CHUNK_ELEMENTS // q[0].numel()))
    products, sums = q.new_empty((n, *q.shape[1:])), q.new_empty((n, heads, length))
    for start in range(0, b, n):
        m = min(n, b - start)
        yield slice(start, start + m), products[:m], sums[:m]


def _exporting() -> bool:
    """Whether torch.export or TorchScript's tracer (under torch.onnx too) is recording the net
    (torch.compiler.is_exporting is missing from older torch, whose export then refuses the net)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return torch.jit.is_tracing() or (is_exporting is not None and is_exporting())


def _window_attention(
    q: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    relative: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_WindowAttention`'s forward, written out of place over the whole batch at once (no chunks,
    no `out=`), for the exporters: the batch stays a dynamic dimension. Same arguments and results.
    The 2p extra query columns are zero, so their q . r is zero, as there."""
    length = q.shape[-1]
    k, row = kernel_size, width + kernel_size - 1
    shifts = [a * row + c for a in range(k) for c in range(k)]  # offset index a*k + c
    logits = torch.stack(  # q . k per offset: (B, heads, k*k, L)
        [(q * key[..., s : s + length]).sum(2) for s in shifts], dim=2
    )
    logits = logits + relative.transpose(1, 2) @ q  # + q . r: (heads, k*k, d) @ (B, heads, d, L)
    attention = logits.masked_fill(~mask, float("-inf")).softmax(dim=2)  # (B, heads, k*k, L)
    out = attention[:, :, :1] * value[..., :length]  # sum_o a_o v_o: (B, heads, d, L)
    for o, s in enumerate(shifts[1:], start=1):
        out = out + attention[:, :, o : o + 1] * value[..., s : s + length]
    return out, attention


class _WindowAttention(torch.autograd.Function):
    """Local attention over flat maps, one window offset at a time, forward and backward.

    Queries are padded with 2p = k - 1 zero columns on the right, keys and values with p
    columns on each side, p rows above and p + 1 below, so that all have rows of
    `row = W + 2p`, and flattened. Query position i = y * row + x then finds its neighbour at
    offset (a, b) at key position i + a * row + b: for one offset, the neighbours of all
    queries are the contiguous slice [s, s + H * row) of the flat keys, s = a * row + b. The
    2p extra query columns are computed and dropped by the caller (their mask is all True, so
    their softmax stays finite and their gradient is zero).

    The work runs chunk by chunk of images (`_image_chunks`), so that the 2 k^2 passes over a
    chunk stay in cache, into preallocated buffers. The backward is by hand: autograd through
    k^2 slices would allocate and zero a full padded gradient per slice.
    """

    @staticmethod
    def forward(ctx, q, key, value, relative, mask, kernel_size, width):
        # q (B, heads, d, L = H*row); key, value (B, heads, d, (H + 2p + 1)*row);
        # relative (heads, d, k*k); mask (k*k, L) bool; the map's width W
        b, heads, d, length = q.shape
        k, row = kernel_size, width + kernel_size - 1
        shifts = [a * row + c for a in range(k) for c in range(k)]  # offset index a*k + c
        attention = q.new_empty((b, heads, k * k, length))  # logits, then weights, in place
        out = torch.zeros_like(q)  # (B, heads, d, L)
        r_t = relative.transpose(1, 2)  # (heads, k*k, d)
        for images, products, sums in _image_chunks(q):
            qc, kc, vc = q[images], key[images], value[images]
            ac, oc = attention[images], out[images]
            n = qc.shape[0]
            # q . r over the W real columns only (a matmul; the extra columns start at 0)
            grid = ac.view(n, heads, k * k, -1, row)
            grid[..., :width] = (r_t @ qc.view(n, heads, d, -1, row)[..., :width].flatten(3)).view(
                n, heads, k * k, -1, width
            )
            grid[..., width:] = 0
            for o, s in enumerate(shifts):  # + q . k, offset by offset
                torch.sum(torch.mul(qc, kc[..., s : s + length], out=products), 2, out=sums)
                ac[:, :, o] += sums
            ac.masked_fill_(~mask, float("-inf"))
            ac -= ac.amax(dim=2, keepdim=True)  # softmax over the window, in place
            ac.exp_()
            ac /= ac.sum(dim=2, keepdim=True)
            for o, s in enumerate(shifts):  # out = sum_o a_o v_o
                oc.addcmul_(ac[:, :, o : o + 1], vc[..., s : s + length])
        ctx.save_for_backward(q, key, value, relative, attention)
        ctx.shifts = shifts
        ctx.set_materialize_grads(False)
        return out, attention

    @staticmethod
    def backward(ctx, g_out, g_attention):
        q, key, value, relative, attention = ctx.saved_tensors
        shifts, length = ctx.shifts, q.shape[-1]
        g_out = torch.zeros_like(q) if g_out is None else g_out.contiguous()
        g_q, g_key, g_value = torch.zeros_like(q), torch.zeros_like(key), torch.zeros_like(value)
        g_logits = torch.empty_like(attention)  # (B, heads, k*k, L)
        for images, products, sums in _image_chunks(q):
            qc, kc, vc = q[images], key[images], value[images]
            ac, gc = attention[images], g_out[images]
            gl, gq, gk, gv = g_logits[images], g_q[images], g_key[images], g_value[images]
            for o, s in enumerate(shifts):  # through out = sum_o a_o v_o
                torch.sum(torch.mul(gc, vc[..., s : s + length], out=products), 2, out=sums)
                gl[:, :, o] = sums
                gv[..., s : s + length].addcmul_(ac[:, :, o : o + 1], gc)
            if g_attention is not None:
                gl += g_attention[images]
            gl -= (gl * ac).sum(dim=2, keepdim=True)  # through the softmax
            gl *= ac
            for o, s in enumerate(shifts):  # through the logits q . (k + r)
                gq.addcmul_(gl[:, :, o : o + 1], kc[..., s : s + length])
                gk[..., s : s + length].addcmul_(gl[:, :, o : o + 1], qc)
        g_q += relative @ g_logits  # (heads, d, k*k) @ (B, heads, k*k, L)
        g_relative = (g_logits @ q.transpose(2, 3)).sum(0).transpose(1, 2)  # (heads, d, k*k)
        return g_q, g_key, g_value, g_relative, None, None, None


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

    def no_weight_decay(self) -> set[str]:
        """The parameters that get no weight decay beyond biases and BN (timm's convention): the
        relative position embeddings of every local attention layer; none in the all-conv net."""
        return {
            f"{prefix}.{name}"
            for prefix, module in self.named_modules()
            if isinstance(module, LocalSelfAttention2d)
            for name in module.no_weight_decay()
        }

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
