"""k-fold cross-validation: data.folds=K data.fold=i, the kfold5 sweep preset, and cvexp-compare
showing the folds of one configuration as one row."""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
from pathlib import Path

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cvexp.comparison_runs import Run, group_runs
from cvexp.data import CIFAR10DataModule
from cvexp.data.datamodule import kfold_split, stratified_folds, stratified_split
from cvexp.errors import UserError
from cvexp.runtime.settings import check_settings
from tests.conftest import CLI_TINY, TRAIN_PER_CLASS, run_cli, write_batches_dir


def _sha256(indices: torch.Tensor) -> str:
    return hashlib.sha256(indices.to(torch.int64).numpy().tobytes()).hexdigest()


def _uneven_labels() -> torch.Tensor:
    """1003 labels of 10 classes in uneven numbers, shuffled."""
    return torch.randint(0, 10, (1003,), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("labels", [torch.arange(10).repeat_interleave(5000), _uneven_labels()])
@pytest.mark.parametrize("folds", [2, 5, 7])
def test_folds_are_disjoint_cover_the_train_set_and_are_stratified(
    labels: torch.Tensor, folds: int
) -> None:
    parts = stratified_folds(labels, folds, seed=42)
    assert len(parts) == folds
    together = torch.cat(parts)
    assert len(together) == len(labels)  # disjoint ...
    assert torch.equal(together.sort().values, torch.arange(len(labels)))  # ... and covering
    per_fold = torch.stack([torch.bincount(labels[p], minlength=10) for p in parts])  # (K, 10)
    assert int((per_fold.max(0).values - per_fold.min(0).values).max()) <= 1  # each class
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    for part in parts:
        assert torch.equal(part, part.sort().values)
    # seeded: the same folds again, other folds from another seed
    assert all(map(torch.equal, parts, stratified_folds(labels, folds, seed=42)))
    assert not torch.equal(stratified_folds(labels, folds, seed=43)[0], parts[0])


def test_fold_i_validates_and_the_other_folds_train() -> None:
    labels = _uneven_labels()
    parts = stratified_folds(labels, 4, seed=3)
    for i in range(4):
        train, val = kfold_split(labels, 4, i, seed=3)
        assert torch.equal(val, parts[i])
        others = torch.cat([p for k, p in enumerate(parts) if k != i]).sort().values
        assert torch.equal(train, others)
        assert not set(train.tolist()) & set(val.tolist())


def test_the_val_size_split_is_unchanged() -> None:
    """The seeded val_size split, bit for bit as before cross-validation existed."""
    labels = torch.arange(10).repeat_interleave(5000)
    train, val = stratified_split(labels, 5000, seed=42)
    assert _sha256(val) == "af0231308a48af8b8e3afaf67e29dcab07dbf424958e00c458b83473d72d578a"
    assert _sha256(train) == "6b6fb4cb41efc8edada805fdd3b95fcc78838221f4e583cc1578d5bf1759d7cd"
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    train, val = stratified_split(shuffled, 5000, seed=42)
    assert _sha256(val) == "d1088913ca547510f57fffdaed0cadd930135feec8049ea81673eac486af2ac4"
    assert _sha256(train) == "c7d8e3f6bb3d121b10b06a05e49f987bd63c9a8a2e70dca081d0c61990d510e7"


def test_the_datamodule_without_folds_keeps_its_split(data_root: Path) -> None:
    dm = CIFAR10DataModule(str(data_root), download=False, val_size=40, seed=3)
    dm.setup("fit")
    record = dm.split_record()
    # pinned before data.folds existed (tests/conftest.py's tiny data set)
    assert record["val_indices_sha256"] == (
        "42d9634753205c7e7d78b44290101b7391530042af123681c72c727860647688"
    )
    assert record["folds"] is None and record["fold"] is None
    assert (record["val_size"], record["train_size"]) == (40, 200)


def test_the_datamodule_validates_on_fold_i_and_trains_on_the_rest(data_root: Path) -> None:
    vals = []
    for i in range(3):
        # val_size is not used with folds (0 would be refused without them)
        dm = CIFAR10DataModule(str(data_root), download=False, val_size=0, folds=3, fold=i, seed=5)
        dm.setup("fit")
        labels = dm.data.train_labels
        assert torch.equal(dm.val_indices, stratified_folds(labels, 3, seed=5)[i])
        assert not set(dm.train_indices.tolist()) & set(dm.val_indices.tolist())
        assert len(dm.train_indices) + len(dm.val_indices) == len(labels) == 240
        assert torch.bincount(labels[dm.val_indices]).tolist() == [TRAIN_PER_CLASS // 3] * 10
        assert len(dm.test_dataloader().dataset) == len(dm.data.test_labels)  # the test set
        record = dm.split_record()
        assert (record["folds"], record["fold"], record["seed"]) == (3, i, 5)
        assert (record["val_size"], record["train_size"]) == (80, 160)
        assert record["val_indices_sha256"] == _sha256(dm.val_indices)
        vals.append(set(dm.val_indices.tolist()))
    assert set.union(*vals) == set(range(240)) and sum(map(len, vals)) == 240


IMPOSSIBLE_FOLDS = [
    ({"folds": 1}, r"data.folds=1 is not a number of cross-validation folds; pass 2 or more"),
    ({"folds": 0}, r"data.folds=0 is not a number"),
    ({"folds": "five"}, r"data.folds=five is not a number"),
    ({"folds": 3, "fold": 3}, r"data.fold=3 is not one of the 3 folds; pass data.fold from 0 to 2"),
    ({"folds": 3, "fold": -1}, r"data.fold=-1 is not one of the 3 folds"),
    ({"fold": 2}, r"data.fold=2 picks a cross-validation fold, but data.folds is null"),
]


@pytest.mark.parametrize(("kwargs", "message"), IMPOSSIBLE_FOLDS)
def test_impossible_folds_are_refused_in_one_sentence(
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(UserError, match=message) as by_the_datamodule:
        CIFAR10DataModule(str(tmp_path), **kwargs)
    assert "\n" not in str(by_the_datamodule.value) and str(by_the_datamodule.value).endswith(".")
    # check_settings says the same before a run folder is claimed
    with pytest.raises(UserError) as by_the_settings:
        check_settings(OmegaConf.create({"data": {"folds": None, "fold": 0, **kwargs}}))
    assert str(by_the_settings.value) == str(by_the_datamodule.value)


@pytest.mark.slow
def test_an_impossible_fold_is_refused_before_a_run_folder_is_claimed(tmp_path: Path) -> None:
    args = [*CLI_TINY, f"data.root={tmp_path / 'data'}", "data.folds=3", "data.fold=3"]
    result = run_cli("cvexp-train", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "error: data.fold=3 is not one of the 3 folds" in line
    assert list(tmp_path.iterdir()) == []


def test_more_folds_than_the_smallest_class_is_refused(data_root: Path) -> None:
    dm = CIFAR10DataModule(str(data_root), download=False, folds=TRAIN_PER_CLASS + 1)
    with pytest.raises(UserError, match=r"data.folds=25 is more folds than .* pass data.folds=24"):
        dm.setup("fit")
    dm = CIFAR10DataModule(str(data_root), download=False, folds=TRAIN_PER_CLASS, fold=23)
    dm.setup("fit")
    assert torch.bincount(dm.data.train_labels[dm.val_indices]).tolist() == [1] * 10


def test_the_config_passes_folds_to_the_datamodule(compose_train) -> None:
    cfg = compose_train()
    assert cfg.data.folds is None and cfg.data.fold == 0
    cfg = compose_train("data.folds=4", "data.fold=2")
    dm = instantiate(cfg.data)
    assert (dm.hparams.folds, dm.hparams.fold) == (4, 2)


def test_the_kfold5_preset_is_a_sweep_over_five_folds(compose_train) -> None:
    cfg = compose_train("sweep=kfold5")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"  # never silently a single run
    assert cfg.data.folds == 5
    (override,) = OverridesParser.create().parse_overrides(
        [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    )
    assert override.key_or_group == "data.fold"
    assert list(override.sweep_iterator()) == [0, 1, 2, 3, 4]


def test_compare_counts_a_fold_like_a_seed() -> None:
    def run(*overrides: str) -> Run:
        return Run(Path("/runs") / "+".join(overrides), list(overrides), {}, "completed")

    runs = [run("data.folds=3", f"data.fold={i}", f"seed={s}") for i in range(3) for s in (1, 2)]
    other = [run("data.folds=5", f"data.fold={i}") for i in range(5)]
    groups = {g.label: len(g.runs) for g in group_runs([*runs, *other])}
    assert groups == {"data.folds=3": 6, "data.folds=5": 5}


@pytest.mark.slow
def test_compare_shows_a_three_fold_sweep_as_one_row(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    result = run_cli(
        "cvexp-train", "-m", *CLI_TINY, "data.folds=3", "data.fold=0,1,2", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (sweep_dir,) = list((tmp_path / "multirun").glob("*/*"))
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    summaries = [json.loads((job / "summary.json").read_text()) for job in jobs]
    assert [(s["split"]["folds"], s["split"]["fold"]) for s in summaries] == [
        (3, 0),
        (3, 1),
        (3, 2),
    ]
    assert len({s["split"]["val_indices_sha256"] for s in summaries}) == 3

    result = run_cli("cvexp-compare", str(sweep_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    with (sweep_dir / "results.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["n"] == "3"
    assert sorted(row["runs"].split()) == [str(job) for job in jobs]
    values = [s["best_val_acc"] for s in summaries]
    assert float(row["best_val_acc_mean"]) == pytest.approx(statistics.fmean(values))
    assert float(row["best_val_acc_std"]) == pytest.approx(statistics.stdev(values))
