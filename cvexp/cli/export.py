"""cvexp-export: a checkpoint as a deployable model (torch.export, ONNX or TorchScript), checked
against PyTorch.

cvexp-export ckpt_path=.../best.ckpt format=torch_export           # outputs/export/<date>/<time>/model.pt2
cvexp-export ckpt_path=.../best.ckpt format=onnx out=deploy/cifar.onnx

The model takes float images (B, 3, 32, 32) in [0, 1] and returns logits; the net's own
normalisation is inside it. The work is `cvexp.checkpoint_export.export_checkpoint`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cvexp.runtime.config import register_resolvers
from cvexp.runtime.exit import exit_on_user_error
from cvexp.runtime.hydra_app import CONFIG_PATH, VERSION_BASE
from cvexp.runtime.run_dir import removed_when_refused

register_resolvers()


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="export")
@exit_on_user_error
def app(cfg: DictConfig) -> None:
    """Export `ckpt_path` in `format`, check it against PyTorch, and record the result."""
    # imported here, not at the top, so that --help starts without torch
    from cvexp.checkpoint_export import export_checkpoint

    with removed_when_refused():
        export_checkpoint(cfg)


def main() -> None:
    """Console entry point `cvexp-export`."""
    app()


if __name__ == "__main__":
    main()
