"""cvexp-train: fit a classifier, early-stop on the validation split, test the best checkpoint.

    cvexp-train model=vgg16 trainer.max_epochs=30
    cvexp-train resume=outputs/<date>/<time>        # continue that run in place
    cvexp-train -m sweep=bn_vs_nobn                 # a sweep into multirun/

The library function is `cvexp.training.train(cfg)`.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from cvexp.errors import UserError, exit_with_error
from cvexp.outside_launch import outside_launch
from cvexp.runtime.config import register_resolvers
from cvexp.runtime.continuation import resume_command_line
from cvexp.runtime.exit import exit_on_user_error
from cvexp.runtime.hydra_app import CONFIG_PATH, VERSION_BASE

register_resolvers()


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="train")
@exit_on_user_error
def app(cfg: DictConfig) -> float:
    """The Hydra app: one run or sweep job; returns the optimised metric for sweepers."""
    # imported here, not at the top, so that --help starts without torch
    from cvexp.training import train_job

    return train_job(cfg)


def main() -> None:
    """Console entry point `cvexp-train`: `resume=RUN_DIR` becomes that run's command line
    before Hydra parses it (runtime/continuation.py)."""
    try:
        sys.argv = resume_command_line(sys.argv, outside_launch())
    except UserError as error:
        exit_with_error(str(error))
    app()


if __name__ == "__main__":
    main()
