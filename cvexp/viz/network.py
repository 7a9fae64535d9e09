"""What a network can show, in one place: filters, per-layer feature maps, attention maps.

Every cvexp net has `forward_intermediates` (per-layer outputs, timm's convention); nets
with attention also have `attention_maps`. `cvexp-visualize` and the TensorBoard figures
callback both draw through `iter_network_figures`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import matplotlib.pyplot as plt
import torch
from torch import nn

from cvexp.models.intermediates import take_indices
from cvexp.models.vit import VisionTransformer
from cvexp.viz.attention import attention_figure, local_attention_figure
from cvexp.viz.features import feature_grid_figure, filters_figure, overview_figure
from cvexp.viz.vit_pipeline import vit_pipeline_figure


def spatial_convs(net: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """(name, conv) of every convolution that mixes space (kernel larger than 1x1), in order."""
    return [
        (name, module)
        for name, module in net.named_modules()
        if isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1
    ]


@torch.no_grad()
def layer_outputs(net: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's output (C, h, w) for one image (3, H, W) in [0, 1]."""
    batch = image[None].to(_device(net))
    return [
        m[0].float().cpu() for m in net.eval().forward_intermediates(batch, intermediates_only=True)
    ]


@torch.no_grad()
def attention_of(net: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """The net's attention weights per attention layer for one image; empty when it has none."""
    maps = getattr(net, "attention_maps", None)
    return [] if maps is None else [w.float().cpu() for w in maps(image[None].to(_device(net)))]


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def network_figures(
    net: nn.Module,
    image: torch.Tensor,
    *,
    caption: str,
    layers: Sequence[int] | None = None,
    top_k: int = 16,
    every_layer: bool = True,
) -> dict[str, plt.Figure]:
    """Every figure of `iter_network_figures` at once, by relative file name (without .png):
    for a few figures (the training callback's); the caller closes them."""
    return dict(
        iter_network_figures(
            net, image, caption=caption, layers=layers, top_k=top_k, every_layer=every_layer
        )
    )


def iter_network_figures(
    net: nn.Module,
    image: torch.Tensor,
    *,
    caption: str,
    layers: Sequence[int] | None = None,
    top_k: int = 16,
    every_layer: bool = True,
) -> Iterator[tuple[str, plt.Figure]]:
    """Figures for one image, as (relative file name without .png, figure), drawn one at a time
    as they are asked for, so that a caller that saves and closes each keeps one open at a time.

    With `every_layer`: `filters/layerNN` and `feature_maps/layerNN` for each chosen layer,
    `overview` (the image through the chosen layers), and attention: `attention/blockNN` per
    chosen block and `attention/rollout` (a ViT), or `attention/layerNN` for the last local
    attention layer; for the scratch ViT, `vit_pipeline` (the image, its patches, and a few
    patches' vectors and embeddings). Without: only `filters` (first layer), `feature_maps`
    (the overview) and `attention`.
    Raises IndexError for a layer out of range, at once, before any figure is drawn.
    """
    outputs = layer_outputs(net, image)
    chosen = take_indices(len(outputs), layers)
    image = image.float().cpu()
    attentions = attention_of(net, image)
    # a ViT's attention: (1, heads, T, T) per block, drawn for the chosen blocks
    blocks = (
        take_indices(len(attentions), layers if layers is not None else [-1])
        if attentions and attentions[0].ndim == 4
        else None
    )
    return _draw(net, image, outputs, chosen, attentions, blocks, caption, top_k, every_layer)


def _draw(
    net: nn.Module,
    image: torch.Tensor,
    outputs: list[torch.Tensor],
    chosen: list[int],
    attentions: list[torch.Tensor],
    blocks: list[int] | None,
    caption: str,
    top_k: int,
    every_layer: bool,
) -> Iterator[tuple[str, plt.Figure]]:
    """The figures of `iter_network_figures`, from the outputs it computed."""
    convs = spatial_convs(net)
    if convs and not every_layer:
        yield "filters", filters_figure(convs[0][1], title=f"{caption}: first conv layer")
    for index in chosen if every_layer else []:
        if index < len(convs):
            name, conv = convs[index]
            shape = tuple(conv.weight.shape)
            yield (
                f"filters/layer{index:02d}",
                filters_figure(conv, title=f"layer {index} ({name}) filters {shape}"),
            )
        maps = outputs[index]
        yield (
            f"feature_maps/layer{index:02d}",
            feature_grid_figure(
                maps, title=f"layer {index} feature maps {tuple(maps.shape)}\n{caption}", k=top_k
            ),
        )
    yield (
        "overview" if every_layer else "feature_maps",
        overview_figure(image, {f"layer {i}": outputs[i] for i in chosen}, title=caption),
    )
    if every_layer and isinstance(net, VisionTransformer):  # the course's ViT: its first steps
        yield "vit_pipeline", vit_pipeline_figure(net, image.to(_device(net)), caption)
    if blocks is not None:  # a ViT
        if every_layer:
            for b in blocks:
                yield (
                    f"attention/block{b:02d}",
                    attention_figure(image, attentions, blocks=[b], title=f"block {b}\n{caption}"),
                )
        yield (
            "attention/rollout" if every_layer else "attention",
            attention_figure(image, attentions, blocks=blocks, title=caption),
        )
    elif attentions:  # local self-attention: (1, heads, k*k, h, w) per layer
        last = len(attentions) - 1
        yield (
            f"attention/layer{last:02d}" if every_layer else "attention",
            local_attention_figure(image, attentions[last], layer=last, title=caption),
        )
