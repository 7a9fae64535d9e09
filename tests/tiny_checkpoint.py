"""Tiny cvexp checkpoints, written directly (no training): for the tests of the commands that
read a checkpoint (eval, visualize, predict, export)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cvexp.classifier import ImageClassifier

# small nets of two families, as `_target_` plus constructor arguments (a checkpoint's net_config)
NETS: dict[str, dict[str, Any]] = {
    "vit": {
        "_target_": "cvexp.models.vit.VisionTransformer",
        "embed_dim": 32,
        "depth": 1,
        "num_heads": 2,
    },
    # VGG16's 13 conv layers at 2 to 16 channels: as many layers as the real one, for figures
    "vgg16": {
        "_target_": "cvexp.models.vgg.VGG",
        "depth": 16,
        "width": 0.03125,
        "head_width": 16,
        "dropout": 0.0,
    },
    "resnet": {
        "_target_": "cvexp.models.resnet_sasa.ResNet",
        "blocks": [1, 1, 1, 1],
        "widths": [8, 8, 8, 8],
        "stem_width": 8,
        "attention_stages": [False, False, False, False],
    },
    # local self-attention in the stem and every stage, a 3x3 window: the maps of 32 to 8 pixels
    # take the windowed path, the 4x4 one the dense path
    "resnet_sasa": {
        "_target_": "cvexp.models.resnet_sasa.ResNet",
        "blocks": [1, 1, 1, 1],
        "widths": [8, 8, 8, 8],
        "stem_width": 8,
        "attention_stages": [True, True, True, True],
        "attention_stem": True,
        "kernel_size": 3,
        "num_heads": 2,
    },
}


def write_tiny_checkpoint(
    path: Path, kind: str = "vit", seed: int = 0, num_classes: int | None = None
) -> Path:
    """A checkpoint that `cvexp.checkpoint.load_classifier` rebuilds, with random weights;
    `num_classes` other than None makes a model of that many classes (as model.num_classes=N)."""
    from hydra.utils import instantiate

    torch.manual_seed(seed)
    net_config = dict(NETS[kind])
    hyper_parameters: dict[str, Any] = {}
    if num_classes is not None:
        net_config["num_classes"] = num_classes
        hyper_parameters["num_classes"] = num_classes
    classifier = ImageClassifier(net=instantiate(net_config), **hyper_parameters)
    classifier.net_config = net_config
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": classifier.state_dict(),
            "net_config": net_config,
            "hyper_parameters": hyper_parameters,
        },
        path,
    )
    return path
