"""A Vision Transformer written from scratch, in the order the course builds it.

1. patches: the image is cut into non-overlapping P x P patches, each flattened and
   linearly mapped to the embedding dimension D;
2. positional encoding: the fixed sinusoidal table (or a learned one, or none);
3. a learnable class token, prepended to the patch sequence;
4. multi-head self-attention, softmax(Q K^T / sqrt(d_k)) V, with a fused path for
   training and an explicit path that returns the attention weights;
5. pre-norm encoder blocks: x + MHSA(LN(x)), then x + MLP(LN(x));
6. the head: LayerNorm, then a linear layer on the class token's output.

Shapes: B batch, C channels, N = (H / P) * (W / P) patches, T = N + 1 tokens, D embedding,
h heads, d = D / h per head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cvexp.models.intermediates import take_indices
from cvexp.models.normalize import CIFAR10_MEAN, CIFAR10_STD, Normalize

PosEmbed = Literal["sinusoidal", "learned", "none"]


# ---------------------------------------------------------------------------------------------
# 1. Patches and the linear mapping
# ---------------------------------------------------------------------------------------------


class PatchEmbedding(nn.Module):
    """Cut (B, C, H, W) images into P x P patches, flatten each, map it linearly to D."""

    def __init__(self, *, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(
                f"img_size={img_size} is not divisible by patch_size={patch_size}; "
                "choose a patch size that divides the image size."
            )
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.num_patches = self.grid**2
        # one matrix for every patch: flattened patch (C * P * P) -> D
        self.proj = nn.Linear(in_chans * patch_size**2, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p)  # (B, C, H/P, P, W/P, P)
        x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/P, W/P, C, P, P): patches in row-major order
        x = x.reshape(b, (h // p) * (w // p), c * p * p)  # (B, N, C*P*P)
        return self.proj(x)  # (B, N, D)


# ---------------------------------------------------------------------------------------------
# 2. Positional encoding
# ---------------------------------------------------------------------------------------------


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """The course's table: p(i, j) = sin(i / 10000^(j/D)) for even j, cos(i / 10000^((j-1)/D)) for odd j.

    Returns (num_positions, dim). Position 0 is the class token, 1..N the patches.
    """
    i = torch.arange(num_positions, dtype=torch.float64)[:, None]  # (T, 1)
    j = torch.arange(dim, dtype=torch.float64)[None, :]  # (1, D)
    even_j = j - (j % 2)  # j for even j, j - 1 for odd j
    angle = i / torch.pow(10000.0, even_j / dim)  # (T, D)
    table = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


# ---------------------------------------------------------------------------------------------
# 4. Multi-head self-attention
# ---------------------------------------------------------------------------------------------


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(d_k)) V, written out; returns (output, weights).

    q, k, v: (B, h, T, d). attn_mask: bool, broadcastable to (B, h, T, T), True where a
    query may attend to a key (as in F.scaled_dot_product_attention); elsewhere the
    score is set to -inf before the softmax. weights: (B, h, T, T), each row sums to 1.
    """
    d_k = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (B, h, T, T)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = scores.softmax(dim=-1)  # (B, h, T, T)
    return weights @ v, weights  # (B, h, T, d), (B, h, T, T)


class MultiHeadSelfAttention(nn.Module):
    """Q = X W_Q, K = X W_K, V = X W_V per head; heads concatenated and multiplied by W_out."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"embed_dim={dim} is not divisible by num_heads={num_heads}; "
                "choose a number of heads that divides the embedding dimension."
            )
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)  # W_Q, W_K, W_V side by side
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)  # W_out
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        *,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, D) -> (B, T, D), and the weights (B, h, T, T) when return_attention."""
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim)  # (B, T, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, T, d)
        dropout = self.attn_drop if self.training else 0.0
        if return_attention:  # the explicit path: for attention maps, never for training
            out, weights = explicit_attention(q, k, v, attn_mask)
            out = out if dropout == 0.0 else F.dropout(weights, dropout) @ v
        else:  # the fused path: the same function, in one kernel
            out, weights = (
                F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout),
                None,
            )
        out = out.transpose(1, 2).reshape(b, t, d)  # (B, T, D): heads concatenated
        return self.proj_drop(self.proj(out)), weights


# ---------------------------------------------------------------------------------------------
# 5. MLP and the pre-norm encoder block
# ---------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Linear -> GELU -> Linear, with dropout; hidden width = mlp_ratio * D."""

    def __init__(self, *, dim: int, mlp_ratio: float, drop: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))  # (B, T, D)


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for a whole sample with probability p (training only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class EncoderBlock(nn.Module):
    """Pre-norm residual block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(
            dim=dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim=dim, mlp_ratio=mlp_ratio, drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        *,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(self.norm1(x), attn_mask, return_attention=return_attention)
        x = x + self.drop_path(attended)  # (B, T, D)
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # (B, T, D)
        return x, weights


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class VisionTransformer(nn.Module):
    """ViT for small images; takes float images in [0, 1] and normalises them itself."""

    def __init__(
        self,
        *,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 10,
        embed_dim: int = 256,
        depth: int = 7,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        pos_embed: PosEmbed = "sinusoidal",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        mean: tuple[float, ...] = CIFAR10_MEAN,
        std: tuple[float, ...] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        if pos_embed not in ("sinusoidal", "learned", "none"):
            raise ValueError(
                f"pos_embed must be 'sinusoidal', 'learned' or 'none', got {pos_embed!r}."
            )
        self.num_classes, self.embed_dim, self.pos_embed_kind = num_classes, embed_dim, pos_embed
        self.normalize = Normalize(mean, std)
        self.patch_embed = PatchEmbedding(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim
        )
        num_tokens = self.patch_embed.num_patches + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        elif pos_embed == "sinusoidal":  # fixed: a buffer, rebuilt by the constructor, not saved
            self.register_buffer(
                "pos_embed", sinusoidal_table(num_tokens, embed_dim)[None], persistent=False
            )
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()  # deeper blocks are dropped more
        self.blocks = nn.ModuleList(
            EncoderBlock(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=rate,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal (std 0.02) weights, zero biases, unit LayerNorms, as in ViT."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        """The parameters that get no weight decay, as timm's and DeiT's ViTs name them: the
        class token, and the position embedding when it is learned (the sinusoidal table is a
        buffer). Biases and LayerNorms get none either, by the optimiser groups' rule."""
        return {"cls_token"} | ({"pos_embed"} if self.pos_embed_kind == "learned" else set())

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> tokens (B, T, D): class token first, positions added."""
        x = self.patch_embed(self.normalize(x))  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, T, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed  # (B, T, D)
        return self.pos_drop(x)

    def forward_features(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        *,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Images -> normalised tokens (B, T, D), and each block's weights (B, h, T, T) when asked."""
        x = self.embed(x)
        attentions = []
        for block in self.blocks:
            x, weights = block(x, attn_mask, return_attention=return_attention)
            attentions.append(weights)
        x = self.norm(x)  # (B, T, D)
        return (x, attentions) if return_attention else x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Each chosen block's patch tokens as a grid (B, D, H/P, W/P), the class token left out."""
        wanted = set(take_indices(len(self.blocks), indices))
        x = self.embed(x)  # (B, T, D)
        grid = self.patch_embed.grid
        intermediates = []
        for i, block in enumerate(self.blocks):
            x, _ = block(x)
            if i in wanted:
                patches = x[:, 1:].transpose(1, 2)  # (B, D, N)
                intermediates.append(patches.reshape(x.shape[0], -1, grid, grid))
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) -> logits (B, num_classes), read from the class token."""
        return self.head(tokens[:, 0])

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        *,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Images (B, C, H, W) in [0, 1] -> logits (B, num_classes) [, attention weights per block]."""
        if return_attention:
            tokens, attentions = self.forward_features(x, attn_mask, return_attention=True)
            return self.forward_head(tokens), attentions
        return self.forward_head(self.forward_features(x, attn_mask))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every block, each (B, h, T, T), through the explicit path."""
        return self.forward(x, return_attention=True)[1]
