"""cvexp-bench: our speed as ratios against the baselines users would otherwise use.

    cvexp-bench                # the full run: a few minutes on 2 CPU cores
    cvexp-bench --quick        # a smoke run under a minute: no speed goal judged, no option timed
    cvexp-bench --data-root /path/to/cifar10 --out results/bench.json
    cvexp-bench --attention     # adds ResNet-26 local self-attention vs convolution (slow)

Every figure is a ratio of medians over interleaved repeats, measured side by side in this
process (or, for memory and start-up, in fresh child processes), so that the machine's noise
hits both sides alike. Without --data-root the data is generated: random pixels of CIFAR-10's
shape. The start-up of cvexp-train (--help and --cfg job) is measured in every mode. The speed
options (bf16-mixed, channels_last, compile) are timed in the full run only, and on a CPU not
compile (minutes to compile), nor bf16 where the CPU emulates it; bench.json and the table say
which were skipped and why.

The work is `cvexp.benchmarks.report.run_benchmarks`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cvexp.errors import UserError, exit_with_error


def parser() -> argparse.ArgumentParser:
    """The command line of cvexp-bench."""
    parser = argparse.ArgumentParser(
        prog="cvexp-bench",
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n")[1],  # the examples, one a line as written above
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run under a minute")
    parser.add_argument("--data-root", type=Path, default=None, help="CIFAR-10 in any format")
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--attention",
        action="store_true",
        help="also ResNet-26 with local self-attention vs convolution (slow on a CPU)",
    )
    parser.add_argument(
        "--device", default=None, help="default: cuda when there is a GPU, else cpu"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Console entry point `cvexp-bench`: parse the command line, run, write --out, print the table."""
    args = parser().parse_args(argv)
    if args.out.exists() and not args.overwrite:
        exit_with_error(f"{args.out} exists; pass another --out, or --overwrite to replace it.")
    try:  # before the minutes of measuring, not after
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        exit_with_error(f"Cannot create the folder {args.out.parent}; pass a writable --out.")
    # imported here, not at the top, so that --help starts without torch
    from cvexp.benchmarks.report import run_benchmarks, table

    try:
        results = run_benchmarks(
            quick=args.quick,
            data_root=args.data_root,
            device=args.device,
            attention=args.attention,
        )
    except UserError as error:
        exit_with_error(str(error))
    try:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    except OSError as error:
        exit_with_error(f"Cannot write {args.out} ({error.strerror}); pass a writable --out.")
    print(table(results))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
