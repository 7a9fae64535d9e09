"""Tiny cvexp checkpoints, written directly (no training): for cvexp-predict and cvexp-export tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

try:
    from cvexp.classifier import ImageClassifier
except ImportError:  # before the rename of cvexp.module to cvexp.classifier
    from cvexp.module import ImageClassifier

# small nets of two families, as `_target_` plus constructor arguments (a checkpoint's net_config)
NETS: dict[str, dict[str, Any]] = {
    "vit": {
        "_target_": "cvexp.models.vit.VisionTransformer",
        "embed_dim": 32,
        "depth": 1,
        "num_heads": 2,
    },
    "resnet": {
        "_target_": "cvexp.models.resnet_sasa.ResNet",
        "blocks": [1, 1, 1, 1],
        "widths": [8, 8, 8, 8],
        "stem_width": 8,
        "attention_stages": [False, False, False, False],
    },
}


def write_tiny_checkpoint(path: Path, kind: str = "vit", seed: int = 0) -> Path:
    """A checkpoint that `cvexp.checkpoint.load_classifier` rebuilds, with random weights."""
    from hydra.utils import instantiate

    torch.manual_seed(seed)
    net_config = NETS[kind]
    classifier = ImageClassifier(net=instantiate(net_config))
    classifier.net_config = net_config
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": classifier.state_dict(),
            "net_config": net_config,
            "hyper_parameters": {},
        },
        path,
    )
    return path
