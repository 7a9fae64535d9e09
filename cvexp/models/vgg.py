"""VGG (Simonyan and Zisserman 2015) for CIFAR-sized images, with and without batch norm.

As in torchvision's `vgg.py`: a configuration list per depth, and `make_layers(cfg,
batch_norm)` that turns it into the convolutional `features`. The head is 512 wide
for 32x32 inputs (`head_width=4096` gives the ImageNet-style head).
"""

from __future__ import annotations

import torch
from torch import nn

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
        self.depth, self.batch_norm, self.num_classes = depth, batch_norm, num_classes
        self.normalize = Normalize(mean, std)
        self.features = make_layers(CFGS[depth], batch_norm=batch_norm, in_chans=in_chans)
        self.pool = nn.AdaptiveAvgPool2d(1)
        width = [c for c in CFGS[depth] if c != "M"][-1]
        self.classifier = nn.Sequential(
            nn.Linear(int(width), head_width),
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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> feature maps (B, 512, H/32, W/32)."""
        return self.features(self.normalize(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature maps (B, 512, h, w) -> logits (B, num_classes)."""
        x = self.pool(features).flatten(1)  # (B, 512)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))
