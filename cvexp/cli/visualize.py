"""cvexp-visualize: filters, per-layer feature maps and attention maps of a checkpoint, as PNGs.

cvexp-visualize ckpt_path=.../best.ckpt                        # test image 0 of CIFAR-10
cvexp-visualize ckpt_path=.../best.ckpt image=cat.png          # any image file
cvexp-visualize ckpt_path=.../best.ckpt test_index=123 layers=[0,4,10]

The work is `cvexp.checkpoint_figures.visualize`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cvexp.runtime.config import register_resolvers
from cvexp.runtime.exit import exit_on_user_error
from cvexp.runtime.hydra_app import CONFIG_PATH, VERSION_BASE
from cvexp.runtime.run_dir import removed_when_refused

register_resolvers()


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="visualize")
@exit_on_user_error
def app(cfg: DictConfig) -> None:
    """Draw the checkpoint's figures for one image into the run directory."""
    # imported here, not at the top, so that --help starts without torch
    from cvexp.checkpoint_figures import visualize

    with removed_when_refused():
        visualize(cfg)


def main() -> None:
    """Console entry point `cvexp-visualize`."""
    app()


if __name__ == "__main__":
    main()
