"""ResNet-26 with local self-attention against the convolution baseline: speed and memory.

    python -m cvexp.benchmarks.conv_vs_attention --batch-size 128 --steps 1 --repeats 3

Training-step throughput of the three variants (baseline, conv stem + attention, full
attention), interleaved in one process, as ratios over the baseline; and the peak memory
of one training step at the same batch, each variant in a fresh interpreter (on a GPU, the
allocator's peak; on the CPU, the growth of the process's peak resident memory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import torch
from torch import nn

from cvexp.benchmarks.memory import peak_rss_mb
from cvexp.benchmarks.timing import interleaved_medians, timed, train_steps
from cvexp.models.resnet_sasa import ResNet

VARIANTS: dict[str, dict[str, Any]] = {
    "resnet26": {"attention_stages": (False,) * 4, "attention_stem": False},
    "resnet26_sasa": {"attention_stages": (True,) * 4, "attention_stem": False},
    "resnet26_full_sasa": {"attention_stages": (True,) * 4, "attention_stem": True},
}


def one_step(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int):
    """A runner of `steps` SGD steps; returns the images it processed."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    return train_steps(net, images, labels, steps, optimizer)


def peak_step_memory_mb(name: str, batch_size: int, device: str) -> float:
    """In this process: the peak memory one training step of a variant adds, in MiB."""
    dev = torch.device(device)
    net = ResNet(**VARIANTS[name]).to(dev)
    images = torch.rand(batch_size, 3, 32, 32, device=dev)
    labels = torch.randint(0, 10, (batch_size,), device=dev)
    run = one_step(net, images, labels, 1)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        run()
        return (torch.cuda.max_memory_allocated(dev) - before) / 2**20
    before = peak_rss_mb()
    run()
    return peak_rss_mb() - before


def measure(
    *,
    batch_size: int = 128,
    steps: int = 1,
    repeats: int = 3,
    device: str = "cpu",
    with_memory: bool = True,
) -> dict[str, Any]:
    """Throughput ratios over the baseline, and (`with_memory`) each variant's peak step memory."""
    dev = torch.device(device)
    torch.manual_seed(0)
    images = torch.rand(batch_size, 3, 32, 32, device=dev)
    labels = torch.randint(0, 10, (batch_size,), device=dev)
    candidates = {
        name: timed(one_step(ResNet(**config).to(dev), images, labels, steps), dev)
        for name, config in VARIANTS.items()
    }
    for measure_once in candidates.values():  # warm-up
        measure_once()
    rates = interleaved_medians(candidates, repeats=repeats)
    baseline = rates["resnet26"]["median"]
    memory: dict[str, float] | None = {} if with_memory else None
    for name in VARIANTS if with_memory else ():  # a fresh interpreter each: peaks never mix
        probe = subprocess.run(
            [
                sys.executable,
                "-m",
                "cvexp.benchmarks.conv_vs_attention",
                "--memory-probe",
                name,
                "--batch-size",
                str(batch_size),
                "--device",
                device,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode != 0:
            raise RuntimeError(f"the memory probe failed: {probe.stderr.strip()[-2000:]}")
        memory[name] = round(float(probe.stdout.strip().splitlines()[-1]), 1)
    return {
        "ratio": rates["resnet26_sasa"]["median"] / baseline,
        "ratio_full_attention": rates["resnet26_full_sasa"]["median"] / baseline,
        "images_per_s": rates,
        "peak_step_memory_mb": memory,
        "batch_size": batch_size,
        "steps_per_repeat": steps,
        "repeats": repeats,
    }


def main() -> None:
    """Command line: print the ratios, or (internally) one memory probe."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-probe", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(peak_step_memory_mb(args.memory_probe, args.batch_size, args.device))
        return
    print(
        json.dumps(
            measure(
                batch_size=args.batch_size,
                steps=args.steps,
                repeats=args.repeats,
                device=args.device,
            ),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
