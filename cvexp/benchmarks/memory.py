"""Peak resident memory that the full-size DataModule adds: prepare_data + setup("fit").

The figures come from a fresh interpreter (`python -m cvexp.benchmarks.memory ROOT`), so
nothing else the benchmark did counts: the baseline is the peak RSS after the imports, a
figure is the growth of the peak over it. Two cases:

- `decode`: no cache, the images are decoded from the source (the first run on a copy);
- `cached`: the decoded-data cache exists and is memory-mapped (every later run).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from cvexp.data import CIFAR10DataModule


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    On Linux this is VmHWM, the high-water mark of this process's own memory map:
    ru_maxrss would start at the parent's peak, since Linux carries it across fork and exec.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def measure_here(root: str) -> dict[str, Any]:
    """In this process: import, record the baseline, then set up the DataModule twice: from
    its cache (memory-mapped) and then decoding the source. The peak only grows, and the
    cached case costs less, so each figure is the peak's growth right after that case. The
    imports (torch and Lightning, with cvexp.data) are in the baseline, as in any run."""
    baseline = peak_rss_mb()
    figures: dict[str, Any] = {}
    for case, cache in (("cached", True), ("decode", False)):
        datamodule = CIFAR10DataModule(root, download=False, cache=cache)
        datamodule.prepare_data()
        datamodule.setup("fit")
        figures[f"{case}_rss_mb"] = round(peak_rss_mb() - baseline, 1)
        data = datamodule.data
        figures["images"] = len(data.train_labels) + len(data.test_labels)
        figures["uint8_mb"] = round((data.train_images.nbytes + data.test_images.nbytes) / 2**20, 1)
        del datamodule, data
    return {**figures, "baseline_mb": round(baseline, 1)}


def measure(root: Path) -> dict[str, Any]:
    """Both cases, in a fresh interpreter; `rss_mb` is the larger, decoding (a first run)."""
    CIFAR10DataModule(str(root), download=False).prepare_data()  # the cache exists from here on
    result = subprocess.run(
        [sys.executable, "-m", "cvexp.benchmarks.memory", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the memory probe failed: {result.stderr.strip()[-2000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return {"rss_mb": figures["decode_rss_mb"], **figures, "root": str(root)}


if __name__ == "__main__":
    print(json.dumps(measure_here(sys.argv[1])))
