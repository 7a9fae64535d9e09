"""cvexp-bench: the quick run works end to end and writes the contract's JSON; the start-up of
cvexp-train is measured on the installed console script; the speed options a machine cannot
measure well are skipped, with the reason in bench.json and the table. No timing asserts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cvexp.benchmarks import framework_overhead, report, startup
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
    # no speed-up measured on a few cold steps: every option is listed as not measured, and why
    assert results["options"] == {}
    assert set(results["options_skipped"]) == set(framework_overhead.OPTIONS)
    assert all("--quick" in o["reason"] for o in results["options_skipped"].values())
    assert "| option trainer.precision=bf16-mixed (speed-up) | not measured in --quick" in (
        done.stdout
    )
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


@pytest.mark.parametrize("native_bf16", [True, False])
def test_options_a_cpu_cannot_run_natively_are_skipped_with_the_reason(
    native_bf16: bool, monkeypatch
) -> None:
    import torch

    # the check behind the CPU presets' precision (cvexp.runtime.hardware.cpu_computes_bf16)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native_bf16)
    skipped = framework_overhead.skipped_options("cpu", quick=False)
    assert skipped["compile"] == framework_overhead.COMPILE_ON_CPU  # minutes to compile on a CPU
    assert ("bf16_mixed" in skipped) is not native_bf16
    if not native_bf16:
        assert "emulates bf16" in skipped["bf16_mixed"]
    assert "channels_last" not in skipped
    assert framework_overhead.skipped_options("cuda", quick=False) == {}  # a GPU runs them all
    quick = framework_overhead.skipped_options("cuda", quick=True)
    assert quick == dict.fromkeys(framework_overhead.OPTIONS, framework_overhead.NOT_IN_QUICK)


def _stub_measurements(monkeypatch, tmp_path: Path) -> list[tuple[str, ...]]:
    """Replace every measurement of run_benchmarks with a constant figure, so that only its
    wiring runs; returns the options that framework_overhead.measure was asked to time."""
    asked: list[tuple[str, ...]] = []
    rate = {"median": 10.0, "repeats": [10.0]}

    def fits(*, options, model_overrides=(), batch_size, **kwargs):
        asked.append(tuple(options))
        overhead = {
            "ratio": 1.0,
            "ours_images_per_s": rate,
            "plain_images_per_s": rate,
            "model": "vgg16_bn",
            "plain_step_ms": 5.0,
            "batch_size": batch_size,
        }
        measured = {"speedup": 1.5, "images_per_s": rate}
        timed = {o: {"override": framework_overhead.OPTIONS[o], **measured} for o in options}
        return {"framework_overhead": overhead, "options": timed}

    class DataModule:
        def __init__(self, *args, **kwargs) -> None: ...
        def prepare_data(self) -> None: ...
        def setup(self, stage: str) -> None: ...

    monkeypatch.setattr(framework_overhead, "measure", fits)
    monkeypatch.setattr(report, "CIFAR10DataModule", DataModule)
    pipeline = {"ratio": 20.0, "ours_images_per_s": rate, "baseline_images_per_s": rate}
    monkeypatch.setattr(report.data_pipeline, "measure", lambda *a, **k: dict(pipeline))
    vit = {"ratio": 1.0, "ours_images_per_s": rate, "timm_images_per_s": rate}
    monkeypatch.setattr(report.vit_vs_timm, "measure", lambda **k: dict(vit))
    memory = {"rss_mb": 180.0, "decode_rss_mb": 180.0, "cached_rss_mb": 11.0, "uint8_mb": 176.0}
    monkeypatch.setattr(report.memory, "measure", lambda root: dict(memory))
    monkeypatch.setattr(report, "bench_data_root", lambda root, workdir: (tmp_path, "stub"))
    return asked


@pytest.mark.parametrize("native_bf16", [True, False])
def test_full_bench_on_a_cpu_records_and_shows_the_skipped_options(
    native_bf16: bool, monkeypatch, tmp_path: Path
) -> None:
    import torch

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native_bf16)
    asked = _stub_measurements(monkeypatch, tmp_path)
    results = report.run_benchmarks(quick=False, device="cpu", with_startup=False)

    timed = ("bf16_mixed", "channels_last") if native_bf16 else ("channels_last",)
    assert asked[0] == timed  # the VGG16-BN fits: the skipped options are never run
    assert set(results["options"]) == set(timed)
    skipped = results["options_skipped"]
    assert set(skipped) == {"compile"} | (set() if native_bf16 else {"bf16_mixed"})
    assert skipped["compile"]["override"] == "model.compile=true"
    assert skipped["compile"]["reason"] == framework_overhead.COMPILE_ON_CPU
    text = report.table(results)
    assert f"| option model.compile=true (speed-up) | {framework_overhead.COMPILE_ON_CPU} |" in text
    bf16_row = "| option trainer.precision=bf16-mixed (speed-up) |"
    assert bf16_row in text
    if native_bf16:
        assert f"{bf16_row} 10.0 | 10.0 (without) | 1.500 |" in text  # measured
    else:
        assert f"{bf16_row} {framework_overhead.BF16_EMULATED} |" in text
    assert results["datamodule_memory"]["goal"] == "rss_mb <= 190.0"


def test_quick_bench_measures_no_option_and_says_so(monkeypatch, tmp_path: Path) -> None:
    asked = _stub_measurements(monkeypatch, tmp_path)
    results = report.run_benchmarks(quick=True, device="cpu", with_startup=False)
    assert asked == [(), ()]  # neither the VGG16-BN fits nor the small net's time an option
    assert results["options"] == {}
    assert set(results["options_skipped"]) == set(framework_overhead.OPTIONS)
    text = report.table(results)
    for override in framework_overhead.OPTIONS.values():
        assert f"| option {override} (speed-up) | {framework_overhead.NOT_IN_QUICK} |" in text
    assert "1.500" not in text  # no speed-up figure printed
