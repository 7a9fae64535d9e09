"""cvexp-predict: classify an image file or a folder of images with a checkpoint.

cvexp-predict ckpt_path=.../best.ckpt inputs=photos/                # predictions.csv, predictions.png
cvexp-predict ckpt_path=.../best.ckpt inputs=cat.jpg top_k=5 device=cpu out=results/cat

The work is `cvexp.prediction.predict`, which returns the table this command writes.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from cvexp.errors import UserError
from cvexp.runtime.config import register_resolvers
from cvexp.runtime.exit import exit_on_user_error
from cvexp.runtime.hydra_app import CONFIG_PATH, VERSION_BASE
from cvexp.runtime.run_dir import removed_when_refused

register_resolvers()


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="predict")
@exit_on_user_error
def app(cfg: DictConfig) -> None:
    """Classify `inputs`; write predictions.csv, skipped.csv and predictions.png into `out`."""
    if not cfg.get("ckpt_path"):
        raise UserError("cvexp-predict needs a checkpoint; pass ckpt_path=<path to a .ckpt file>.")
    if not cfg.get("inputs"):
        raise UserError(
            "cvexp-predict needs images; pass inputs=<an image file or a folder of images>."
        )
    # imported here, not at the top, so that --help starts without torch
    from cvexp import prediction

    with removed_when_refused():
        grid_size = prediction.int_setting(
            "grid_size", cfg.get("grid_size"), low=0, fix="pass grid_size=0 (no grid) or more"
        )
        out = Path(str(cfg.out)).expanduser() if cfg.get("out") else Path(cfg.paths.output_dir)
        prediction.check_output_folder(out)
        table = prediction.predict(
            cfg.ckpt_path,
            cfg.inputs,
            top_k=cfg.get("top_k"),
            batch_size=cfg.get("batch_size"),
            device=str(cfg.get("device", "auto")),
            trust_checkpoint=cfg.trust_checkpoint,
        )
        prediction.write_predictions_csv(table, out / "predictions.csv")
        if table.skipped:
            prediction.write_skipped_csv(table, out / "skipped.csv")
        title = (
            f"{Path(str(cfg.ckpt_path)).name}: top-1 predictions, "
            f"{min(grid_size, len(table.rows))} of {len(table.rows)} images"
        )
        grid = prediction.save_prediction_grid(
            table, out / "predictions.png", count=grid_size, title=title
        )
        prediction.print_report(table, out, grid=grid)


def main() -> None:
    """Console entry point `cvexp-predict`."""
    app()


if __name__ == "__main__":
    main()
