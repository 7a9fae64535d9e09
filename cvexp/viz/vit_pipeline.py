"""The start of a ViT for one image: patches, their flattened vectors, and their embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from cvexp.models.vit import VisionTransformer

PATCH_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#ff7f00", "#984ea3", "#a65628")


@torch.no_grad()
def patch_vectors(net: VisionTransformer, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The net's own flattened, normalised patches (N, C*P*P) and their embeddings (N, D).

    Runs `net.normalize` and `net.patch_embed` on the image (3, H, W) in [0, 1] and reads the
    input and output of the patch embedding's linear map, so the order is the net's own.
    """
    captured: dict[str, torch.Tensor] = {}

    def grab(module: torch.nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        captured["flat"], captured["embedded"] = inputs[0], output

    handle = net.patch_embed.proj.register_forward_hook(grab)
    try:
        net.patch_embed(net.normalize(image[None].float()))  # (1, N, D)
    finally:
        handle.remove()
    return captured["flat"][0].cpu(), captured["embedded"][0].cpu()  # (N, C*P*P), (N, D)


def default_patches(grid: int) -> list[int]:
    """Four patches spread over a G x G grid, as row-major indices."""
    cells = [(0.15, 0.2), (0.35, 0.7), (0.6, 0.3), (0.85, 0.8)]
    chosen = [int(r * grid) * grid + int(c * grid) for r, c in cells]
    return list(dict.fromkeys(chosen))


def patch_mosaic(image: np.ndarray, patch: int) -> np.ndarray:
    """(H, W, 3) image -> the patches laid out with a one-pixel white gap between them."""
    h, w, _ = image.shape
    rows, cols = h // patch, w // patch
    step = patch + 1
    mosaic = np.ones((rows * step - 1, cols * step - 1, 3))
    for r in range(rows):
        for c in range(cols):
            mosaic[r * step : r * step + patch, c * step : c * step + patch] = image[
                r * patch : (r + 1) * patch, c * patch : (c + 1) * patch
            ]
    return mosaic


def vit_pipeline_figure(
    net: VisionTransformer,
    image: torch.Tensor,
    caption: str,
    *,
    patches: Sequence[int] | None = None,
) -> plt.Figure:
    """The image, its grid of P x P patches, and a few patches' flattened vectors -> D-dim embeddings.

    image: (3, H, W) in [0, 1]; patch size, normalisation and the linear map are the net's own.
    """
    p = net.patch_embed.patch_size
    grid = image.shape[-1] // p
    flat, embedded = patch_vectors(net, image)  # (N, C*P*P), (N, D)
    chosen = list(patches) if patches is not None else default_patches(grid)
    chosen = chosen[: len(PATCH_COLOURS)]
    picture = image.permute(1, 2, 0).clamp(0, 1).cpu().numpy()  # (H, W, 3)
    channels = image.shape[0]

    fig = plt.figure(figsize=(12, 4.0 + 1.05 * len(chosen)), dpi=100, layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.6, 1.05 * len(chosen)])
    ax_image, ax_grid, ax_text = top.subplots(1, 3, width_ratios=[1, 1, 1.25])

    ax_image.imshow(picture, interpolation="nearest")
    for i in range(1, grid):
        ax_image.axhline(i * p - 0.5, color="white", linewidth=0.5, alpha=0.7)
        ax_image.axvline(i * p - 0.5, color="white", linewidth=0.5, alpha=0.7)
    for index, colour in zip(chosen, PATCH_COLOURS, strict=False):
        r, c = divmod(index, grid)
        ax_image.add_patch(
            Rectangle((c * p - 0.5, r * p - 0.5), p, p, fill=False, edgecolor=colour, linewidth=2)
        )
    ax_image.set_title(f"1. the image, {image.shape[-1]}x{image.shape[-2]}", fontsize=10)
    ax_image.axis("off")

    ax_grid.imshow(patch_mosaic(picture, p), interpolation="nearest")
    step = p + 1
    for index, colour in zip(chosen, PATCH_COLOURS, strict=False):
        r, c = divmod(index, grid)
        ax_grid.add_patch(
            Rectangle(
                (c * step - 1, r * step - 1),
                p + 1,
                p + 1,
                fill=False,
                edgecolor=colour,
                linewidth=2,
            )
        )
    ax_grid.set_title(f"2. cut into {grid}x{grid} = {grid * grid} patches of {p}x{p}", fontsize=10)
    ax_grid.axis("off")

    ax_text.axis("off")
    ax_text.text(
        0.0,
        0.5,
        f"3. each patch: normalise, flatten\n"
        f"   ({channels} channels x {p} x {p} = {flat.shape[1]} numbers,\n"
        f"   all R, then G, then B, each row by row)\n\n"
        f"4. one shared linear map E\n"
        f"   ({flat.shape[1]} -> D = {embedded.shape[1]}) gives the patch embedding\n\n"
        f"Then: a class token is put in front,\n"
        f"positions are added, and the {grid * grid + 1} tokens\n"
        f"go through the encoder blocks.",
        fontsize=10,
        va="center",
        family="monospace",
    )

    axes = bottom.subplots(len(chosen), 3, width_ratios=[0.5, 5, 5], squeeze=False)
    flat_limit = float(flat[chosen].abs().max()) or 1.0
    emb_limit = float(embedded[chosen].abs().max()) or 1.0
    for row, (index, colour) in enumerate(zip(chosen, PATCH_COLOURS, strict=False)):
        r, c = divmod(index, grid)
        ax_patch, ax_flat, ax_emb = axes[row]
        ax_patch.imshow(picture[r * p : (r + 1) * p, c * p : (c + 1) * p], interpolation="nearest")
        ax_patch.set_xticks([])
        ax_patch.set_yticks([])
        for spine in ax_patch.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(2.5)
        ax_patch.set_ylabel(f"patch {index}\n(row {r}, col {c})", fontsize=8, color=colour)
        flat_image = ax_flat.imshow(
            flat[index][None].numpy(),
            cmap="RdBu_r",
            vmin=-flat_limit,
            vmax=flat_limit,
            aspect="auto",
            interpolation="nearest",
        )
        ax_flat.set_yticks([])
        block = p * p
        ax_flat.set_xticks([block * (k + 0.5) - 0.5 for k in range(channels)])
        ax_flat.set_xticklabels(["R", "G", "B"][:channels] if channels == 3 else range(channels))
        for k in range(1, channels):
            ax_flat.axvline(block * k - 0.5, color="black", linewidth=1)
        emb_image = ax_emb.imshow(
            embedded[index][None].numpy(),
            cmap="PuOr_r",
            vmin=-emb_limit,
            vmax=emb_limit,
            aspect="auto",
            interpolation="nearest",
        )
        ax_emb.set_yticks([])
        if row == 0:
            ax_flat.set_title(f"flattened, normalised patch ({flat.shape[1]} values)", fontsize=10)
            ax_emb.set_title(f"-> its embedding ({embedded.shape[1]} values)", fontsize=10)
        if row == len(chosen) - 1:
            ax_emb.set_xlabel("embedding dimension", fontsize=9)
            ax_flat.set_xlabel("channel block (each: the patch's pixels, row by row)", fontsize=9)
        else:
            ax_emb.set_xticks([])
    bottom.colorbar(flat_image, ax=axes[:, 1], shrink=0.8, label="normalised pixel")
    bottom.colorbar(emb_image, ax=axes[:, 2], shrink=0.8, label="embedding value")
    fig.suptitle(caption, fontsize=12)
    return fig
