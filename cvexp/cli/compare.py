"""cvexp-compare: read runs and sweeps; write a convergence graph and a results table.

cvexp-compare multirun/2026-11-26/12-00-00
cvexp-compare outputs/run_a outputs/run_b --metric val/loss --out comparisons/ab
cvexp-compare multirun/2026-11-26/12-00-00 --x both      # against epochs and training time

The work is `cvexp.comparison.compare`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cvexp.errors import UserError, exit_with_error


def parser() -> argparse.ArgumentParser:
    """The command line of cvexp-compare."""
    parser = argparse.ArgumentParser(
        prog="cvexp-compare", description="Compare runs: a convergence graph and a results table."
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run directories or sweep directories")
    parser.add_argument(
        "--metric",
        default="val/acc",
        help="any logged scalar, e.g. val/loss or train/acc: an extra curve and table column "
        "(default val/acc)",
    )
    parser.add_argument(
        "--x",
        choices=("epoch", "time", "both"),
        default="epoch",
        help="the graph's x axis: epoch (convergence.png, the default), time: training seconds, "
        "validation not counted, from each run's time/train_seconds (convergence_time.png), or "
        "both",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="a new output folder (default: the one sweep directory given, or a fresh "
        "comparison-N inside it, or comparisons/<date>_<time>); never replaces earlier results",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Console entry point `cvexp-compare`."""
    args = parser().parse_args(argv)
    # imported here, not at the top, so that --help starts without torch
    from cvexp.comparison import compare

    try:
        result = compare(args.dirs, out_dir=args.out, metric=args.metric, x=args.x)
    except UserError as error:
        exit_with_error(str(error))
    for duplicate in result["duplicates"]:
        print(f"note: {duplicate}")
    print(result["table"])
    if result["note"]:
        print(f"note: {result['note']}")
    print(
        f"wrote {', '.join(result['figures'])}, results.md and results.csv to {result['out_dir']}"
    )


if __name__ == "__main__":
    main()
