"""Nothing a user made is lost, concurrent cache builds are safe, and CPU runs are reproducible."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from cvexp.checkpoint import read_checkpoint
from cvexp.comparison import compare
from cvexp.training import train
from tests.conftest import snapshot, write_batches_dir

BUILD_CACHE = """
import sys, torch
from cvexp.data import CIFAR10DataModule
dm = CIFAR10DataModule(sys.argv[1], download=False, val_size=40)
dm.prepare_data()
dm.setup("fit")
print(int(dm.data.train_images.sum()), int(dm.data.test_images.sum()))
"""


def test_two_processes_building_the_same_cache_at_once(tmp_path: Path, tiny) -> None:
    root = tmp_path / "data"
    write_batches_dir(root, tiny)
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD_CACHE, str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [job.communicate(timeout=300) for job in jobs]
    assert all(job.returncode == 0 for job in jobs), outputs
    expected = f"{int(tiny.train_images.sum())} {int(tiny.test_images.sum())}"
    assert [out.strip() for out, _ in outputs] == [expected, expected]
    (cache,) = (root / ".cvexp_cache").glob("*.pt")  # one complete file, no temporary left
    assert not list((root / ".cvexp_cache").glob("*.tmp"))
    tensors = torch.load(cache, weights_only=True)
    assert torch.equal(tensors["train_images"], torch.from_numpy(tiny.train_images))


def test_compare_writes_only_into_its_own_folder(finished_run, tmp_path: Path, monkeypatch) -> None:
    _, run_dir, _ = finished_run
    before = snapshot(run_dir)
    monkeypatch.chdir(tmp_path)
    out = compare([run_dir])["out_dir"]
    assert out.resolve().parent == (tmp_path / "comparisons").resolve()
    assert compare([run_dir])["out_dir"] != out  # a second comparison gets its own folder
    assert snapshot(run_dir) == before  # (cvexp-visualize: test_visualize_command)


def test_seeded_deterministic_cpu_runs_are_identical(compose_train, tmp_path: Path) -> None:
    results = []
    for name in ("a", "b"):
        cfg = compose_train(
            "seed=7",
            "trainer.deterministic=true",
            "model=vgg16",
            "trainer.max_epochs=1",
            run_dir=tmp_path / name,
        )
        summary = train(cfg)
        weights = read_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
        results.append((summary, weights["state_dict"]))
    (first, first_weights), (second, second_weights) = results
    for key in ("best_val_acc", "test_acc", "test_loss", "best_epoch"):
        assert first[key] == second[key], key
    assert first["split"] == second["split"]
    assert first_weights.keys() == second_weights.keys()
    for key, tensor in first_weights.items():
        assert torch.equal(tensor, second_weights[key]), key
