"""The CPU presets behind docs/results/: they run, and the committed results still name them."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from cvexp.runtime.config import compose_config
from cvexp.training import train
from tests.conftest import FAST, TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PRESETS = ["small_vgg16", "small_vgg16_bn_same_lr", "small_vgg16_bn", "small_vit"]


def swept_experiments(sweep: str) -> set[str]:
    """The experiments a sweep preset lists."""
    params = OmegaConf.load(ROOT / "conf" / "sweep" / f"{sweep}.yaml").hydra.sweeper.params
    return set(str(params.experiment).split(","))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", PRESETS)
def test_cpu_presets_run_two_steps(experiment: str, data_root: Path, tmp_path: Path) -> None:
    fast = [o for o in FAST if o not in TINY_MODEL]  # the preset's own model, not the tiny one
    cfg = compose_config(
        "train",
        [f"experiment={experiment}", *fast, f"data.root={data_root}", "trainer.max_epochs=1"],
        tmp_path / "run",
    )
    assert cfg.trainer.limit_train_batches == 2
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["epochs_run"] == 1
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("sweep", "folder"), [("small_bn_vs_nobn", "bn_vs_nobn"), ("small_cnn_vs_vit", "cnn_vs_vit")]
)
def test_committed_results_name_the_configurations_of_their_preset(sweep: str, folder: str) -> None:
    table = RESULTS / folder / "results.csv"
    if not table.is_file():
        pytest.skip(f"{table} is not there yet")
    with table.open() as f:
        rows = list(csv.DictReader(f))
    labels = {row["configuration"] for row in rows}
    assert labels == {f"experiment={e}" for e in swept_experiments(sweep)}
    for row in rows:
        assert float(row["test_acc_mean"]) > 0.1  # better than chance: real, finished runs
        assert int(row["n"]) >= 1


def test_committed_recipe_ablation_has_two_seeds_a_row_and_both_tests() -> None:
    """docs/results/recipes/: each change to the preset with 2 seeds, test/acc and the flip's."""
    table = RESULTS / "recipes" / "results.csv"
    if not table.is_file():
        pytest.skip(f"{table} is not there yet")
    with table.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 4
    for row in rows:
        assert int(row["n"]) == 2 and row["status"] == "2 completed"
        assert 0.1 < float(row["test_acc_mean"]) < 1 and 0.1 < float(row["test_acc_tta_mean"]) < 1
    readme = (RESULTS / "recipes" / "README.md").read_text()
    for row in rows:  # every change in the table is named, with its overrides, in the README
        for override in row["configuration"].split(", "):
            assert override in readme or override == "vgg16_bn", override


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cnn_presets_train_in_bf16_only_where_the_cpu_computes_it(
    native_bf16: bool, monkeypatch, tmp_path: Path
) -> None:
    import torch

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native_bf16)
    expected = "bf16-mixed" if native_bf16 else "32-true"
    for experiment in ["small_vgg16", "small_vgg16_bn_same_lr", "small_vgg16_bn"]:
        overrides = [f"experiment={experiment}", "trainer.accelerator=cpu"]
        cfg = compose_config("train", overrides, tmp_path / experiment)
        assert cfg.trainer.precision == expected
    # on a GPU they follow trainer=gpu's bf16, whatever the CPU
    cfg = compose_config("train", ["experiment=small_vgg16", "trainer=gpu"], tmp_path / "gpu")
    assert cfg.trainer.precision == "bf16-mixed"
    # bf16 did not speed the ViT up on a CPU: it stays in float32 either way
    cfg = compose_config("train", ["experiment=small_vit"], tmp_path / "small_vit")
    assert cfg.trainer.precision == "32-true"
    GlobalHydra.instance().clear()


def test_cpu_presets_carry_the_measured_winners(tmp_path: Path) -> None:
    """The recipe ablation's one winner, flip TTA (test/acc_tta beside test/acc), and the CPU
    speed option that paid, channels_last, for the CNNs."""
    for experiment in PRESETS:
        cfg = compose_config("train", [f"experiment={experiment}"], tmp_path / experiment)
        assert cfg.tta == "flip", experiment
        # NHWC convolutions paid 1.52x on the CPU for the CNNs (docs/benchmarks.md)
        assert cfg.model.channels_last == (experiment != "small_vit"), experiment
    GlobalHydra.instance().clear()


def swept_models(sweep: str) -> list[str]:
    """The models a sweep preset lists."""
    params = OmegaConf.load(ROOT / "conf" / "sweep" / f"{sweep}.yaml").hydra.sweeper.params
    return str(params.model).split(",")


def test_small_conv_vs_attention_builds_the_three_nets_at_the_reduced_width(
    tmp_path: Path,
) -> None:
    """Each job of the sweep, composed as the sweep composes it, builds its ResNet-26 variant at
    the preset's width and takes a training step in the preset's precision (bf16 autocast
    where the CPU computes it natively; forced here, so that every machine checks it)."""
    import torch
    from hydra.utils import instantiate

    from cvexp.models.resnet_sasa import LocalSelfAttention2d

    assert swept_models("small_conv_vs_attention") == [
        "resnet26",
        "resnet26_sasa",
        "resnet26_full_sasa",
    ]
    params = {}
    for model in swept_models("small_conv_vs_attention"):
        overrides = ["experiment=small_resnet26", f"model={model}", "trainer.accelerator=cpu"]
        cfg = compose_config("train", overrides, tmp_path / model)
        assert list(cfg.model.net.widths) == [16, 32, 64, 128] and cfg.tta == "flip"
        assert cfg.trainer.max_epochs == 3 and cfg.callbacks.early_stopping is None
        torch.manual_seed(0)
        net = instantiate(cfg.model.net)
        layers = [m for m in net.modules() if isinstance(m, LocalSelfAttention2d)]
        assert bool(layers) == (model != "resnet26")
        assert all(layer.kernel_size == 5 and layer.num_heads == 4 for layer in layers)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net(torch.rand(4, 3, 32, 32)).float().logsumexp(dim=1).mean()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        params[model] = sum(p.numel() for p in net.parameters())
    # as at full width: attention has fewer parameters than the convolutions it replaces
    assert params["resnet26_sasa"] < params["resnet26"]
    GlobalHydra.instance().clear()


def test_committed_conv_vs_attention_results_have_the_three_nets() -> None:
    table = RESULTS / "conv_vs_attention" / "results.csv"
    if not table.is_file():
        pytest.skip(f"{table} is not there yet")
    with table.open() as f:
        rows = {row["configuration"]: row for row in csv.DictReader(f)}
    assert set(rows) == {f"model={m}" for m in swept_models("small_conv_vs_attention")}
    for row in rows.values():
        assert row["status"] == "1 completed" and float(row["test_acc_mean"]) > 0.1
    readme = (RESULTS / "conv_vs_attention" / "README.md").read_text()
    assert "train img/s" in readme and "sweep=small_conv_vs_attention" in readme
