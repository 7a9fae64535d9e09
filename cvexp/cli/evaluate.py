"""cvexp-eval: test a checkpoint; write metrics, per-class accuracy and a confusion matrix.

cvexp-eval ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt

The work is `cvexp.evaluation.evaluate`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cvexp.runtime.config import register_resolvers
from cvexp.runtime.exit import exit_on_user_error
from cvexp.runtime.hydra_app import CONFIG_PATH, VERSION_BASE
from cvexp.runtime.run_dir import removed_when_refused

register_resolvers()


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="eval")
@exit_on_user_error
def app(cfg: DictConfig) -> None:
    """Test `ckpt_path` on the official test set; the results go into the run directory."""
    # imported here, not at the top, so that --help starts without torch
    from cvexp.evaluation import evaluate

    with removed_when_refused():
        evaluate(cfg)


def main() -> None:
    """Console entry point `cvexp-eval`."""
    app()


if __name__ == "__main__":
    main()
