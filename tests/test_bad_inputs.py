"""The bad-input catalogue: every mistake a user can make, through the real console scripts.

Each case runs a command as a subprocess and asserts a non-zero exit, one clear message
that names the problem and the fix (no traceback), and that no file of an earlier run
changed. Cases that need files build them in their own folder first. The cases run
concurrently in one fixture, since each is mostly interpreter start-up.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric.utilities.seed import max_seed_value, min_seed_value
from omegaconf import DictConfig, OmegaConf

from cvexp.checkpoint import read_checkpoint
from cvexp.data.formats import CLASSES
from cvexp.errors import UserError
from cvexp.runtime.settings import CIFAR10_CLASSES, MAX_SEED, check_settings
from tests.conftest import (
    CLI_TINY,
    TinyCifar,
    run_cli,
    snapshot,
    write_batches_dir,
    write_image_tree,
)


class CreatesFile:
    """Unpickling this object opens (creates) a file: what a malicious checkpoint could do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@dataclass
class Workspace:
    """What a case can use: the finished run, a scratch folder, and the tiny dataset."""

    cwd: Path
    run_dir: Path
    summary: dict
    scratch: Path
    tiny: TinyCifar

    @property
    def best(self) -> str:
        return self.summary["best_model_path"]


@dataclass
class Case:
    """A command, its arguments (built from the workspace) and the fragments of its message."""

    command: str
    args: Callable[[Workspace], list[str]]
    fragments: tuple[str, ...]
    file_size_limit: int | None = None
    # refused before anything is made: run in an empty folder of its own, which must stay empty
    in_empty_folder: bool = False
    # a usage error of cvexp's own: exit status 2 and one `error:` line on stderr
    usage_error: bool = False


def train(*overrides: str) -> Callable[[Workspace], list[str]]:
    return lambda ws: [*CLI_TINY, *overrides]


def refused_setting(*overrides: str, fragments: tuple[str, ...]) -> Case:
    """cvexp-train refusing a setting before a run folder is claimed (runtime/settings.py)."""
    return Case(
        "cvexp-train",
        lambda ws: [*CLI_TINY, f"data.root={ws.cwd / 'data'}", *overrides],
        fragments,
        in_empty_folder=True,
        usage_error=True,
    )


def train_on(make_root: Callable[[Workspace], Path]) -> Callable[[Workspace], list[str]]:
    return lambda ws: [*CLI_TINY, f"data.root={make_root(ws)}"]


def corrupt_archive(ws: Workspace) -> Path:
    (ws.scratch / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 40)
    return ws.scratch


def truncated_batch(ws: Workspace) -> Path:
    folder = write_batches_dir(ws.scratch, ws.tiny)
    (folder / "data_batch_2").write_bytes((folder / "data_batch_2").read_bytes()[:500])
    return ws.scratch


def nine_classes(ws: Workspace) -> Path:
    write_image_tree(ws.scratch, ws.tiny)
    for split in ("train", "test"):
        shutil.rmtree(ws.scratch / split / "truck")
    return ws.scratch


def text_among_images(ws: Workspace) -> Path:
    write_image_tree(ws.scratch, ws.tiny)
    (ws.scratch / "train" / "cat" / "notes.txt").write_text("not an image")
    return ws.scratch


def other_architecture(ws: Workspace) -> Path:
    checkpoint = torch.load(ws.best, map_location="cpu", weights_only=True)
    checkpoint["net_config"]["depth"] = 13  # claims a VGG13, holds the tiny VGG11's weights
    torch.save(checkpoint, ws.scratch / "vgg13.ckpt")
    return ws.scratch / "vgg13.ckpt"


def empty_file(ws: Workspace) -> Path:
    (ws.scratch / "empty.ckpt").write_bytes(b"")
    return ws.scratch / "empty.ckpt"


def crafted_pickle(ws: Workspace) -> Path:
    torch.save(
        {"state_dict": {}, "payload": CreatesFile(ws.scratch / "pwned")}, ws.scratch / "evil.ckpt"
    )
    return ws.scratch / "evil.ckpt"


def crafted_weights(ws: Workspace) -> Path:
    torch.save({"pos_embed": CreatesFile(ws.scratch / "pwned")}, ws.scratch / "vit_tiny.pth")
    return ws.scratch / "vit_tiny.pth"


def text_as_image(ws: Workspace) -> Path:
    (ws.scratch / "cat.png").write_text("not an image")
    return ws.scratch / "cat.png"


def empty_dir(ws: Workspace) -> Path:
    (ws.scratch / "nothing").mkdir()
    return ws.scratch / "nothing"


# A scheduler that multiplies the learning rate by 1e14 after the first 2 steps (epoch 0):
# epoch 0 trains and saves a best checkpoint, then the loss blows up in epoch 1.
EXPLODING_LR = [
    "~model.scheduler",
    "+model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,"
    "step_size:2,gamma:1.0e14}",
    "model.optimizer.lr=0.01",
    "trainer.max_epochs=3",
    "trainer.limit_val_batches=1",
]

CASES = {
    "unknown-config-option": Case(
        "cvexp-train", train("model=resnet999"), ("resnet999", "vgg16_bn")
    ),
    "wrong-type": Case(
        "cvexp-train", train("data.batch_size=abc"), ("data.batch_size must be an integer",)
    ),
    "missing-dataset": Case(
        "cvexp-train", train("data.root=./nowhere"), ("No CIFAR-10 found", "data.download=true")
    ),
    "download-without-network": Case(
        "cvexp-train",
        train(
            "data.root=./empty",
            "data.download=true",
            "+data.download_url=http://127.0.0.1:9/cifar-10-python.tar.gz",
        ),
        ("Could not download CIFAR-10", "may be offline", "CVEXP_DATA"),
    ),
    "corrupt-archive": Case(
        "cvexp-train", train_on(corrupt_archive), ("truncated or corrupt", "download it again")
    ),
    "truncated-batch-file": Case(
        "cvexp-train",
        train_on(truncated_batch),
        ("data_batch_2 is truncated or corrupt", "data.download=true"),
    ),
    "image-folder-with-9-classes": Case(
        "cvexp-train", train_on(nine_classes), ("no train images for class truck", "all ten")
    ),
    "text-file-among-images": Case(
        "cvexp-train", train_on(text_among_images), ("notes.txt is not an image", "remove it")
    ),
    "val-size-zero": Case("cvexp-train", train("data.val_size=0"), ("data.val_size=0 is out",)),
    "val-size-whole-train-set": Case(
        "cvexp-train", train("data.val_size=50000"), ("data.val_size=50000 is out of range",)
    ),
    "batch-not-divisible-by-devices": Case(
        "cvexp-train",
        train("trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=9"),
        ("data.batch_size=9 is not divisible by the 2 devices",),
    ),
    "eval-wrong-architecture": Case(
        "cvexp-eval",
        lambda ws: [f"ckpt_path={other_architecture(ws)}"],
        ("do not fit the architecture",),
    ),
    "eval-empty-checkpoint": Case(
        "cvexp-eval", lambda ws: [f"ckpt_path={empty_file(ws)}"], ("is not a", "ckpt_path")
    ),
    "eval-crafted-pickle": Case(
        "cvexp-eval", lambda ws: [f"ckpt_path={crafted_pickle(ws)}"], ("trust_checkpoint=true",)
    ),
    "visualize-crafted-pickle": Case(
        "cvexp-visualize",
        lambda ws: [f"ckpt_path={crafted_pickle(ws)}"],
        ("trust_checkpoint=true",),
    ),
    "train-from-crafted-pickle": Case(
        "cvexp-train",
        lambda ws: [*CLI_TINY, f"ckpt_path={crafted_pickle(ws)}"],
        ("trust_checkpoint=true",),
    ),
    "timm-weights-crafted-pickle": Case(
        "cvexp-train",
        lambda ws: [
            *CLI_TINY,
            "model=timm_vit",
            "model.net.name=vit_tiny_patch16_224",
            f"model.net.weights={crafted_weights(ws)}",
        ],
        ("could run code", "model.net.weights= a .safetensors file"),
    ),
    "visualize-text-as-image": Case(
        "cvexp-visualize",
        lambda ws: [f"ckpt_path={ws.best}", f"image={text_as_image(ws)}"],
        ("is not a readable image", "image="),
    ),
    "visualize-missing-checkpoint": Case(
        "cvexp-visualize",
        lambda ws: [f"ckpt_path={ws.scratch / 'missing.ckpt'}"],
        ("Checkpoint not found", "ckpt_path="),
    ),
    "visualize-layer-out-of-range": Case(
        "cvexp-visualize",
        lambda ws: [f"ckpt_path={ws.best}", "layers=[99]"],
        ("layer 99 is out of range",),
    ),
    "compare-empty-dir": Case(
        "cvexp-compare", lambda ws: [str(empty_dir(ws))], ("run directory or a sweep directory",)
    ),
    "compare-missing-dir": Case(
        "cvexp-compare",
        lambda ws: [str(ws.scratch / "missing")],
        ("run directory or a sweep directory",),
    ),
    "bench-without-cifar10": Case(
        "cvexp-bench",
        lambda ws: ["--quick", "--data-root", str(ws.scratch / "empty")],
        ("No CIFAR-10 found", "--data-root"),
    ),
    "trains-nothing": refused_setting(
        "trainer.max_epochs=0", fragments=("trainer.max_epochs=0 trains nothing",)
    ),
    "fractional-epochs": refused_setting(
        "trainer.max_epochs=1.5", fragments=("trainer.max_epochs=1.5", "whole number")
    ),
    "epochs-not-a-number": refused_setting(
        "trainer.max_epochs=abc", fragments=("trainer.max_epochs=abc", "trainer.max_epochs=30")
    ),
    "fractional-min-epochs": refused_setting(
        "trainer.min_epochs=0.5", fragments=("trainer.min_epochs=0.5", "whole number")
    ),
    "no-epoch-limit-with-a-planned-schedule": refused_setting(
        "trainer.max_epochs=-1", fragments=("trainer.max_epochs=-1", "no length to plan")
    ),
    "no-training-batches": refused_setting(
        "trainer.limit_train_batches=0", fragments=("limit_train_batches=0",)
    ),
    "no-validation-batches": refused_setting(
        "trainer.limit_val_batches=0", fragments=("limit_val_batches=0",)
    ),
    "negative-learning-rate": refused_setting(
        "model.optimizer.lr=-1", fragments=("model.optimizer.lr=-1", "positive")
    ),
    "nan-learning-rate": refused_setting(
        "model.optimizer.lr=nan", fragments=("model.optimizer.lr=nan", "finite")
    ),
    "unknown-compile-mode": refused_setting(
        "model.compile=true",
        "model.compile_mode=fast",
        fragments=("model.compile_mode=fast", "reduce-overhead"),
    ),
    "compile-mode-without-compile": refused_setting(
        "model.compile_mode=reduce-overhead",
        fragments=("model.compile_mode=reduce-overhead", "model.compile=true"),
    ),
    "infinite-mixup-alpha": refused_setting(
        "data.mixup_alpha=inf", fragments=("data.mixup_alpha=inf", "finite")
    ),
    "negative-cutmix-alpha": refused_setting(
        "data.cutmix_alpha=-1", fragments=("data.cutmix_alpha=-1", "data.cutmix_alpha=null")
    ),
    "seed-out-of-range": refused_setting(
        "seed=8589934592", fragments=("seed=8589934592", "from 0 to 4294967295")
    ),
    "seed-not-a-whole-number": refused_setting("seed=1.5", fragments=("seed=1.5", "e.g. seed=42")),
    "five-classes-on-cifar10": refused_setting(
        "model.num_classes=5", fragments=("model.num_classes=5", "pass model.num_classes=10")
    ),
    "timm-head-of-100-classes": refused_setting(
        "model=timm_vit",
        "model.net.num_classes=100",
        fragments=("model.net.num_classes=100", "pass model.net.num_classes=10"),
    ),
    "model-base-is-not-a-model": Case(
        "cvexp-train",
        train("model=_base"),
        ("Could not find 'model/_base'", "vgg16_bn"),
        in_empty_folder=True,
    ),
    "data-root-is-a-file": Case(
        "cvexp-train", train_on(text_as_image), ("is a file", "the folder that holds CIFAR-10")
    ),
    "resume-as-another-model": Case(
        "cvexp-train",
        lambda ws: [f"resume={ws.run_dir}", "model=vit"],
        ("model=vit cannot change", "init_from="),
    ),
    "train-on-from-another-network": Case(
        "cvexp-train",
        lambda ws: [*CLI_TINY, "model.net.head_width=32", f"ckpt_path={ws.best}"],
        ("holds the weights of another network", "init_from="),
    ),
    "visualize-top-k-zero": Case(
        "cvexp-visualize", lambda ws: [f"ckpt_path={ws.best}", "top_k=0"], ("top_k=0",)
    ),
    "disk-full-writing-a-checkpoint": Case(
        "cvexp-train",
        train("callbacks.feature_maps=null"),  # so that the checkpoint is the first large file
        ("Could not write the checkpoint", "File too large", "resume="),
        file_size_limit=100_000,  # the tiny model's checkpoint needs ~117 KB
    ),
}


def new_run_dirs(cwd: Path, before: set[Path]) -> list[Path]:
    return [p for p in (cwd / "outputs").glob("*/*") if p.is_dir() and p not in before]


@dataclass
class Outcome:
    result: subprocess.CompletedProcess
    scratch: Path
    # in_empty_folder cases: what the command's working folder held before and after it ran
    before: list[Path]
    after: list[Path]


@pytest.fixture(scope="module")
def outcomes(finished_run, tmp_path_factory, tiny: TinyCifar) -> dict[str, Outcome]:
    """Every case, run concurrently (each is mostly interpreter start-up), one thread each."""
    cwd, run_dir, summary = finished_run
    before, earlier_runs = snapshot(run_dir), set((cwd / "outputs").glob("*/*"))

    def run(name: str) -> Outcome:
        case = CASES[name]
        scratch = tmp_path_factory.mktemp(name)
        args = case.args(Workspace(cwd, run_dir, summary, scratch, tiny))
        where = scratch / "cwd" if case.in_empty_folder else cwd
        where.mkdir(exist_ok=True)
        before = sorted(where.rglob("*")) if case.in_empty_folder else []
        result = run_cli(
            case.command,
            *args,
            cwd=where,
            env={"OMP_NUM_THREADS": "1"},
            file_size_limit=case.file_size_limit,
        )
        after = sorted(where.rglob("*")) if case.in_empty_folder else []
        return Outcome(result, scratch, before, after)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(CASES, pool.map(run, CASES), strict=True))
    assert snapshot(run_dir) == before  # an earlier run is never touched
    for new in new_run_dirs(cwd, earlier_runs):  # a run that failed records why
        if (new / "summary.json").is_file():
            recorded = json.loads((new / "summary.json").read_text())
            assert recorded["status"] == "failed" and recorded["error"], new
        assert not list(new.rglob("*.partial")), new  # no half-written checkpoint left
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_clear_sentence_and_touches_nothing(name: str, outcomes) -> None:
    case, outcome = CASES[name], outcomes[name]
    result, scratch = outcome.result, outcome.scratch
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    for fragment in case.fragments:
        assert fragment in result.stderr, result.stderr
    assert not (scratch / "pwned").exists()  # no checkpoint ran code while loading
    if case.usage_error:
        assert result.returncode == 2, output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{case.command}: error: " in lines[0], result.stderr
    if case.in_empty_folder:
        assert outcome.after == outcome.before == [], outcome.after  # no run folder, no file


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_best_checkpoint_so_far(finished_run) -> None:
    cwd, run_dir, _ = finished_run
    before, earlier_runs = snapshot(run_dir), set((cwd / "outputs").glob("*/*"))
    result = run_cli("cvexp-train", *CLI_TINY, *EXPLODING_LR, cwd=cwd)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for fragment in ("The training loss became", "at epoch 1, step", "model.optimizer.lr"):
        assert fragment in result.stderr, result.stderr
    assert snapshot(run_dir) == before
    (run,) = new_run_dirs(cwd, earlier_runs)
    recorded = json.loads((run / "summary.json").read_text())
    assert recorded["status"] == "failed" and "The training loss became" in recorded["error"]
    (best,) = (run / "checkpoints").glob("epoch000-*.ckpt")  # saved after the healthy epoch
    weights = read_checkpoint(best)["state_dict"]
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_a_crafted_checkpoint_runs_code_only_when_trusted(tmp_path: Path, tiny) -> None:
    ws = Workspace(tmp_path, tmp_path, {}, tmp_path, tiny)
    evil = crafted_pickle(ws)
    with pytest.raises(UserError, match="trust_checkpoint=true"):
        read_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()
    read_checkpoint(evil, trust=True)  # what trust_checkpoint=true does: the payload runs
    assert (tmp_path / "pwned").exists()


def test_settings_bounds_agree_with_the_data_and_lightning() -> None:
    assert len(CLASSES) == CIFAR10_CLASSES
    assert (min_seed_value, max_seed_value) == (0, MAX_SEED)


def settings(values: dict[str, Any]) -> DictConfig:
    """A train-like config with these dotted keys set (the rest as the defaults are)."""
    cfg = OmegaConf.create(
        {
            "seed": 42,
            "trainer": {"max_epochs": 60, "min_epochs": 1},
            "model": {
                "num_classes": 10,
                "net": {"num_classes": "${..num_classes}"},
                "optimizer": {"lr": 0.1},
                "scheduler": {"_target_": "torch.optim.lr_scheduler.OneCycleLR"},
            },
            "data": {"seed": "${seed}", "mixup_alpha": None, "cutmix_alpha": None},
        }
    )
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"trainer.max_epochs": -1, "model.scheduler": None},  # no limit, a constant rate
        {"trainer.max_epochs": -1, "trainer.max_steps": 100},  # the schedule plans max_steps
        {"trainer.max_epochs": None},  # Lightning's default
        {"trainer.min_epochs": 0},
        {"trainer.min_epochs": None},
        {"seed": 0},
        {"seed": 2**32 - 1},
        {"seed": None, "data.seed": 7},  # not seeded, a fixed validation split
        {"model.optimizer.lr": 1},
        {"data.mixup_alpha": 0.2, "data.cutmix_alpha": 1},
    ],
)
def test_settings_that_work_pass(values: dict[str, Any]) -> None:
    check_settings(settings(values))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("trainer.max_epochs", True),  # a bool is not a number of epochs
        ("trainer.max_epochs", -2),
        ("trainer.max_epochs", 2.0),
        ("trainer.min_epochs", -1),
        ("trainer.min_epochs", False),
        ("seed", 2**32),
        ("seed", -1),
        ("seed", True),
        ("seed", "abc"),
        ("data.seed", None),
        ("model.num_classes", 10.0),
        ("model.net.num_classes", 9),
        ("model.optimizer.lr", math.inf),
        ("model.optimizer.lr", 0),
        ("model.optimizer.lr", "abc"),
        ("data.mixup_alpha", 0),
        ("data.cutmix_alpha", math.nan),
        ("data.cutmix_alpha", True),
    ],
)
def test_a_setting_that_cannot_work_is_named(key: str, value: Any) -> None:
    with pytest.raises(UserError, match=re.escape(f"{key}=")):
        check_settings(settings({key: value}))
