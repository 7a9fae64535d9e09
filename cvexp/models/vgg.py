"""VGG (Simonyan and Zisserman 2015) for CIFAR-sized images, with and without batch norm.

As in torchvision's `vgg.py`: a configuration list per depth, and `make_layers(cfg,
batch_norm)` that turns it into the convolutional `features`. The head is 512 wide
for 32x32 inputs (`head_width=4096` gives the ImageNet-style head). `width` multiplies
every conv's channels: at 0.25 VGG16 keeps its 16 layers (what makes it hard to train
without batch norm) at about 1/16 of the compute.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cvexp.models.intermediates import take_indices
from cvexp.models.normalize import CIFAR10_MEAN, CIFAR10_STD, Normalize

# numbers are conv output channels (3x3, padding 1); "M" is a 2x2 max-pool
CFGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}


def scaled(cfg: list[int | str], width: float) -> list[int | str]:
    """`cfg` with every channel count multiplied by `width` (at least 1 channel)."""
    return [item if item == "M" else max(1, round(int(item) * width)) for item in cfg]


def make_layers(cfg: list[int | str], *, batch_norm: bool, in_chans: int = 3) -> nn.Sequential:
    """Conv3x3 [-> BatchNorm] -> ReLU for each number in `cfg`, MaxPool2d(2) for each "M"."""
    layers: list[nn.Module] = []
    channels = in_chans
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        # a conv followed by BN needs no bias: BN's shift replaces it
        layers.append(nn.Conv2d(channels, int(item), kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(item)))
        layers.append(nn.ReLU(inplace=True))
        channels = int(item)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG-11/13/16/19 with an optional batch norm after every conv; takes float images in [0, 1]."""

    def __init__(
        self,
        *,
        depth: int = 16,
        batch_norm: bool = True,
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1.0,
        head_width: int = 512,
        dropout: float = 0.5,
        mean: tuple[float, ...] = CIFAR10_MEAN,
        std: tuple[float, ...] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        if depth not in CFGS:
            raise ValueError(f"VGG depth must be one of {sorted(CFGS)}, got {depth}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}.")
        self.depth, self.batch_norm, self.num_classes = depth, batch_norm, num_classes
        cfg = scaled(CFGS[depth], width)
        self.normalize = Normalize(mean, std)
        self.features = make_layers(cfg, batch_norm=batch_norm, in_chans=in_chans)
        # the ReLU after each conv: where a layer's output is read, after BN when there is one
        self.layer_ends = [i for i, m in enumerate(self.features) if isinstance(m, nn.ReLU)]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = int([c for c in cfg if c != "M"][-1])
        self.classifier = nn.Sequential(
            nn.Linear(self.num_features, head_width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(head_width, head_width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(head_width, num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming init for convs (without it, VGG16 without BN stays at chance), small normal for the last layer."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.classifier[-1].weight, std=0.01)  # near-uniform first predictions

    def no_weight_decay(self) -> set[str]:
        """The parameters that get no weight decay beyond biases and BN (timm's convention):
        none, as a VGG has no embeddings."""
        return set()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> feature maps (B, 512 * width, H/32, W/32)."""
        return self.features(self.normalize(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The output of each chosen conv layer (after its BN and ReLU), each (B, C, h, w)."""
        wanted = set(take_indices(len(self.layer_ends), indices))
        x = self.normalize(x)
        intermediates = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self.layer_ends and self.layer_ends.index(i) in wanted:
                intermediates.append(x)  # (B, C, h, w)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature maps (B, C, h, w) -> logits (B, num_classes)."""
        x = self.pool(features).flatten(1)  # (B, C)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))
