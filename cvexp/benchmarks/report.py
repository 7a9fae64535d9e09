"""cvexp-bench's measurements in one call: our speed as ratios against the baselines users
would otherwise use, with the goals each figure is judged by, and the table of the results.

    from cvexp.benchmarks.report import run_benchmarks, table
    results = run_benchmarks(quick=True)      # the bench.json dict
    print(table(results))

Every figure is a ratio of medians over interleaved repeats, measured side by side in this
process (or, for memory and start-up, in fresh child processes), so that the machine's noise
hits both sides alike. Without `data_root` the data is generated: random pixels of CIFAR-10's
shape. The console command is `cvexp-bench` (cvexp/cli/bench.py).
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import lightning
import timm
import torch

import cvexp
from cvexp.benchmarks import (
    conv_vs_attention,
    data_pipeline,
    framework_overhead,
    memory,
    startup,
    vit_vs_timm,
)
from cvexp.benchmarks.synthetic import write_synthetic_cifar
from cvexp.data import CIFAR10DataModule
from cvexp.data.formats import find_source
from cvexp.errors import UserError
from cvexp.viz.tables import markdown_table

# The speed goals, for a 2-core CPU machine; `ratio` is always ours / baseline.
GOALS = {
    "framework_overhead": ("ratio", ">=", 0.99),
    "framework_overhead_small": ("ratio", ">=", 0.97),
    "data_pipeline": ("ratio", ">=", 20.0),
    "vit_vs_timm": ("ratio", ">=", 1.0),
    "datamodule_memory": ("rss_mb", "<=", 190.0),
    # the slower of `cvexp-train --help` and `--cfg job` (median seconds)
    "startup": ("seconds", "<=", 2.0),
}

# Sizes per mode: the full run gives stable figures; --quick only proves the tool works (it
# measures no speed option: see framework_overhead.skipped_options).
SETTINGS = {
    "full": {
        "fit": {"batch_size": 64, "warmup": 2, "steps": 16, "repeats": 3},
        "fit_small": {"batch_size": 64, "warmup": 5, "steps": 100, "repeats": 5},
        "pipeline": {"images": 20_000, "repeats": 5},
        "vit": {"batch_size": 128, "steps": 3, "repeats": 7},
        "attention": {"batch_size": 128, "steps": 1, "repeats": 3, "with_memory": True},
        "startup": {"repeats": 3},
    },
    "quick": {
        "fit": {"batch_size": 16, "warmup": 1, "steps": 2, "repeats": 1},
        "fit_small": {"batch_size": 16, "warmup": 1, "steps": 4, "repeats": 1},
        "pipeline": {"images": 1_024, "repeats": 2},
        "vit": {"batch_size": 32, "steps": 1, "repeats": 2},
        "attention": {"batch_size": 16, "steps": 1, "repeats": 1, "with_memory": False},
        "startup": {"repeats": 3},  # a few seconds: the same figure as the full run
    },
}


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        # the modules' own versions: a source checkout on PYTHONPATH has no installed metadata
        "lightning": lightning.__version__,
        "timm": timm.__version__,
        "cvexp": cvexp.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def check_goal(name: str, section: dict[str, Any], *, judged: bool) -> dict[str, Any]:
    """Add the goal and whether it was met (None when the run is too short to judge)."""
    key, op, target = GOALS[name]
    value = section[key]
    section["goal"] = f"{key} {op} {target}"
    met = value >= target if op == ">=" else value <= target
    section["goal_met"] = bool(met) if judged else None
    return section


def bench_data_root(data_root: Path | None, workdir: Path) -> tuple[Path, str]:
    """The folder to benchmark on, and what it holds."""
    if data_root is None:
        return write_synthetic_cifar(workdir / "data"), "generated (random pixels, 50,000 + 10,000)"
    root = data_root.expanduser().resolve()
    source = find_source(root)
    if source is None:
        raise UserError(
            f"No CIFAR-10 found at {root}; pass --data-root a folder that holds it in a "
            "supported format, or leave --data-root out to benchmark on generated data."
        )
    return root, f"{source.kind} at {root}"


def default_device() -> str:
    """cuda when a GPU is there, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_benchmarks(
    *,
    quick: bool = False,
    data_root: Path | None = None,
    device: str | None = None,
    attention: bool = False,
    with_startup: bool = True,
) -> dict[str, Any]:
    """Run the measurements and return the results (what cvexp-bench writes to bench.json).

    `quick`: sizes that only prove the tool works (its goals are not judged); `device`: the
    default is `default_device()`; `attention`: also ResNet-26 local self-attention vs
    convolution (slow on a CPU); `with_startup`: also the start-up of cvexp-train (seconds).
    """
    settings = SETTINGS["quick" if quick else "full"]
    device = device or default_device()
    dev = torch.device(device)
    workdir = framework_overhead.make_workdir()
    try:
        root, data_description = bench_data_root(data_root, workdir)
        results: dict[str, Any] = {"mode": "quick" if quick else "full", "data": data_description}
        print(f"cvexp-bench ({results['mode']}) on {device}, data: {data_description}", flush=True)

        if with_startup:  # first: seconds, and a missing console script is refused at once
            print("  start-up of cvexp-train --help and --cfg job ...", flush=True)
            # the same runs in both modes, so the goal is judged in both
            results["startup"] = check_goal(
                "startup", startup.measure(**settings["startup"]), judged=True
            )

        skipped = framework_overhead.skipped_options(device, quick=quick)
        options = tuple(name for name in framework_overhead.OPTIONS if name not in skipped)
        print("  framework overhead and options ...", flush=True)
        fits = framework_overhead.measure(
            data_root=root,
            workdir=workdir,
            options=options,
            device=device,
            **settings["fit"],
        )
        results["framework_overhead"] = check_goal(
            "framework_overhead", fits["framework_overhead"], judged=not quick
        )
        results["options"] = fits["options"]
        results["options_skipped"] = {
            name: {"override": framework_overhead.OPTIONS[name], "reason": reason}
            for name, reason in skipped.items()
        }

        print("  framework overhead on a small, fast net ...", flush=True)
        small = framework_overhead.measure(
            data_root=root,
            workdir=workdir,
            model_overrides=framework_overhead.SMALL_NET,
            options=(),
            device=device,
            breakdown=True,
            **settings["fit_small"],
        )
        results["framework_overhead_small"] = check_goal(
            "framework_overhead_small", small["framework_overhead"], judged=not quick
        )

        print("  data pipeline ...", flush=True)
        datamodule = CIFAR10DataModule(str(root), download=False)
        datamodule.prepare_data()
        datamodule.setup("fit")
        pipeline = data_pipeline.measure(datamodule, device=device, **settings["pipeline"])
        results["data_pipeline"] = check_goal("data_pipeline", pipeline, judged=not quick)
        del datamodule

        print("  scratch ViT vs timm ViT ...", flush=True)
        vit = vit_vs_timm.measure(device=device, **settings["vit"])
        results["vit_vs_timm"] = check_goal("vit_vs_timm", vit, judged=not quick)

        if attention:  # about 15 minutes at batch 128 on 2 CPU cores
            print("  ResNet-26: local self-attention vs convolution ...", flush=True)
            results["attention_vs_conv"] = conv_vs_attention.measure(
                device=device, **settings["attention"]
            )

        print("  DataModule memory ...", flush=True)
        results["datamodule_memory"] = check_goal(
            "datamodule_memory", memory.measure(root), judged=not quick
        )
        results["machine"] = machine(dev)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def table(results: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    fo, dp = results["framework_overhead"], results["data_pipeline"]
    vit, mem = results["vit_vs_timm"], results["datamodule_memory"]
    start = results.get("startup")
    rows = [
        ("figure", "ours", "baseline", "ratio", "goal", "met"),
        (
            f"framework overhead (VGG16-BN train steps, batch {fo['batch_size']}, img/s)",
            f"{fo['ours_images_per_s']['median']:.1f}",
            f"{fo['plain_images_per_s']['median']:.1f} (plain loop)",
            f"{fo['ratio']:.3f}",
            fo["goal"],
            _yes(fo["goal_met"]),
        ),
        (
            "data pipeline (augmented + normalised, img/s)",
            f"{dp['ours_images_per_s']['median']:,.0f}",
            f"{dp['baseline_images_per_s']['median']:,.0f} (per-sample PIL)",
            f"{dp['ratio']:.1f}",
            dp["goal"],
            _yes(dp["goal_met"]),
        ),
        (
            "scratch ViT vs timm ViT (train steps, img/s)",
            f"{vit['ours_images_per_s']['median']:.1f}",
            f"{vit['timm_images_per_s']['median']:.1f} (timm)",
            f"{vit['ratio']:.3f}",
            vit["goal"],
            _yes(vit["goal_met"]),
        ),
        (
            "DataModule peak memory, full CIFAR-10 (MB over baseline)",
            f"{mem['decode_rss_mb']:.0f} decoding, {mem['cached_rss_mb']:.0f} cached",
            f"{mem['uint8_mb']:.0f} (the uint8 data)",
            "",
            mem["goal"],
            _yes(mem["goal_met"]),
        ),
    ]
    small = results["framework_overhead_small"]
    rows.insert(
        2,
        (
            f"framework overhead, small net ({small['model']}, plain step "
            f"{small['plain_step_ms']:.1f} ms, batch {small['batch_size']}, img/s)",
            f"{small['ours_images_per_s']['median']:.1f}",
            f"{small['plain_images_per_s']['median']:.1f} (plain loop)",
            f"{small['ratio']:.3f}",
            small["goal"],
            _yes(small["goal_met"]),
        ),
    )
    if start:
        rows.append(
            (
                "start-up: cvexp-train --help / --cfg job (median s, a fresh process each)",
                f"{start['help_seconds']['median']:.2f} / {start['cfg_job_seconds']['median']:.2f}",
                f"{start['python_seconds']['median']:.2f} (python -c pass)",
                "",
                start["goal"],
                _yes(start["goal_met"]),
            )
        )
    attention = results.get("attention_vs_conv", {})
    memory_mb = attention.get("peak_step_memory_mb")
    pairs = (("resnet26_sasa", "ratio"), ("resnet26_full_sasa", "ratio_full_attention"))
    for name, key in pairs if attention else ():
        peak = (
            f", step peak {memory_mb[name]:.0f} MB vs {memory_mb['resnet26']:.0f}"
            if memory_mb
            else ""
        )
        rows.append(
            (
                f"{name} vs resnet26 (train steps, batch {attention['batch_size']}, img/s{peak})",
                f"{attention['images_per_s'][name]['median']:.1f}",
                f"{attention['images_per_s']['resnet26']['median']:.1f} (conv)",
                f"{attention[key]:.3f}",
                "",
                "",
            )
        )
    for option in results["options"].values():
        extra = (
            f", compile {option['compile_seconds']:.0f} s" if "compile_seconds" in option else ""
        )
        rows.append(
            (
                f"option {option['override']} (speed-up{extra})",
                f"{option['images_per_s']['median']:.1f}",
                f"{fo['ours_images_per_s']['median']:.1f} (without)",
                f"{option['speedup']:.3f}",
                "",
                "",
            )
        )
    for option in results.get("options_skipped", {}).values():
        rows.append((f"option {option['override']} (speed-up)", option["reason"], "", "", "", ""))
    text = markdown_table(list(rows[0]), [list(row) for row in rows[1:]])
    breakdown = small.get("breakdown_ms_per_step")
    if breakdown:
        text += (
            "\n\nWhere the small net's step time goes (ms per step, profiled fit; actions nest):\n"
        )
        text += "\n".join(f"  {ms:8.3f}  {action}" for action, ms in breakdown.items())
    return text


def _yes(met: bool | None) -> str:
    return "n/a (quick)" if met is None else "yes" if met else "NO"
