"""Training-step throughput of our scratch ViT against timm's VisionTransformer, same configuration.

    python -m cvexp.benchmarks.vit_vs_timm --batch-size 128 --steps 5 --repeats 7

Both networks get the same D, depth, heads, MLP ratio, patch size, a learned positional
embedding and a class token, the same batch, AdamW and cross-entropy, in the same process;
repeats alternate between them and the medians are compared. Ratio: ours / timm (higher is better).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from cvexp.benchmarks.timing import interleaved_medians, timed, train_steps
from cvexp.models.vit import VisionTransformer

CONFIG = {
    "img_size": 32,
    "patch_size": 4,
    "embed_dim": 256,
    "depth": 7,
    "num_heads": 4,
    "mlp_ratio": 2.0,
}


def build_pair(config: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """Our ViT (learned positions, as timm's) and timm's, identically configured."""
    ours = VisionTransformer(**config, num_classes=10, pos_embed="learned")
    anchor = timm.models.vision_transformer.VisionTransformer(
        **config, num_classes=10, in_chans=3, qkv_bias=True, class_token=True, global_pool="token"
    )
    n_ours, n_anchor = (sum(p.numel() for p in m.parameters()) for m in (ours, anchor))
    if n_ours != n_anchor:
        raise RuntimeError(f"configurations differ: {n_ours} parameters against timm's {n_anchor}")
    return ours, anchor


def measure(
    *, batch_size: int = 128, steps: int = 5, repeats: int = 7, device: str = "cpu"
) -> dict[str, Any]:
    """Images per second of a training step, ours and timm's, and the ratio of the medians."""
    dev = torch.device(device)
    torch.manual_seed(0)
    ours, anchor = (m.to(dev) for m in build_pair(CONFIG))
    images = torch.rand(batch_size, 3, 32, 32, device=dev)
    labels = torch.randint(0, 10, (batch_size,), device=dev)
    candidates = {
        name: timed(
            train_steps(net, images, labels, steps, torch.optim.AdamW(net.parameters(), lr=1e-3)),
            dev,
        )
        for name, net in (("ours", ours), ("timm", anchor))
    }
    for measure in candidates.values():  # warm-up
        measure()
    results = interleaved_medians(candidates, repeats=repeats)
    return {
        "config": CONFIG,
        "batch_size": batch_size,
        "steps_per_repeat": steps,
        "repeats": repeats,
        "ours_images_per_s": results["ours"],
        "timm_images_per_s": results["timm"],
        "ratio": results["ours"]["median"] / results["timm"]["median"],
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"cpu ({platform.machine()})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
    }


def main() -> None:
    """Command line: print the ratio and write it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("vit_vs_timm.json"))
    args = parser.parse_args()
    result = measure(
        batch_size=args.batch_size, steps=args.steps, repeats=args.repeats, device=args.device
    )
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"scratch ViT {result['ours_images_per_s']['median']:.1f} img/s, "
        f"timm ViT {result['timm_images_per_s']['median']:.1f} img/s, "
        f"ratio {result['ratio']:.3f} on {result['device']}; written to {args.out}"
    )


if __name__ == "__main__":
    main()
