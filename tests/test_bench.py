"""cvexp-bench: the quick run works end to end and writes the contract's JSON; the start-up of
cvexp-train is measured on the installed console script. No timing asserts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cvexp.benchmarks import startup
from tests.conftest import run_cli


def assert_startup_figures(figures: dict) -> None:
    """Median seconds of cvexp-train --help and --cfg job, and of a bare Python, all positive."""
    for key in ("help_seconds", "cfg_job_seconds", "python_seconds"):
        assert math.isfinite(figures[key]["median"]) and figures[key]["median"] > 0, key
        assert len(figures[key]["repeats"]) == figures["repeats"], key
    assert figures["seconds"] == max(
        figures["help_seconds"]["median"], figures["cfg_job_seconds"]["median"]
    )


def test_startup_times_the_console_script_in_fresh_processes() -> None:
    figures = startup.measure(repeats=1)  # three subprocesses: a few seconds
    assert figures["command"] == "cvexp-train" and figures["repeats"] == 1
    assert_startup_figures(figures)


@pytest.mark.slow
def test_quick_bench_writes_the_contract_json_and_never_overwrites_it(tmp_path: Path) -> None:
    done = run_cli("cvexp-bench", "--quick", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "bench.json").read_text())

    for key in ("framework_overhead", "framework_overhead_small", "data_pipeline", "vit_vs_timm"):
        ratio = results[key]["ratio"]
        assert math.isfinite(ratio) and ratio > 0, key
    small = results["framework_overhead_small"]
    assert "model.net.width=0.125" in small["model"] and small["plain_step_ms"] > 0
    breakdown = small["breakdown_ms_per_step"]  # the profiled fit: our hooks by name
    assert any("training_step" in action for action in breakdown), breakdown
    assert any("on_after_batch_transfer" in action for action in breakdown), breakdown
    assert all(ms >= 0 for ms in breakdown.values())
    assert "Where the small net's step time goes" in done.stdout
    memory = results["datamodule_memory"]
    assert memory["images"] == 60_000  # the full-size DataModule, on generated data here
    assert memory["rss_mb"] == memory["decode_rss_mb"] >= memory["cached_rss_mb"]
    assert results["machine"]["device"] == "cpu" and results["machine"]["torch"]
    assert set(results["options"]) == {"bf16_mixed", "channels_last"}
    assert all(option["speedup"] > 0 for option in results["options"].values())
    assert results["mode"] == "quick"
    assert results["startup"]["repeats"] == 3  # in every mode: a few seconds
    assert_startup_figures(results["startup"])
    assert results["startup"]["goal"] == "seconds <= 2.0"
    assert isinstance(results["startup"]["goal_met"], bool)  # judged even in a quick run
    assert "| start-up: cvexp-train --help / --cfg job" in done.stdout
    assert all(results[k]["goal_met"] is None for k in ("data_pipeline", "vit_vs_timm"))
    assert "| data pipeline" in done.stdout and "| framework overhead, small net" in done.stdout

    before = (tmp_path / "bench.json").read_bytes()
    again = run_cli("cvexp-bench", "--quick", cwd=tmp_path)
    assert again.returncode == 2
    assert "bench.json exists" in again.stderr and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    assert (tmp_path / "bench.json").read_bytes() == before
