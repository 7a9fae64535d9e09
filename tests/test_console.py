"""A clean console: a real `cvexp-train` run on a fresh copy of the data
prints no Lightning advert or deprecation warning, a model summary with real FLOPs, and one
line before and one after decoding the data."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from lightning.pytorch.utilities.model_summary import ModelSummary

from cvexp.classifier import ImageClassifier
from cvexp.models.vgg import VGG
from tests.conftest import CLI_TINY, run_cli, write_batches_dir

# a count as Lightning's summary prints it: 406 K, 1.2 M, 0
FLOPS_TOTAL = re.compile(r"Total FLOPs: ([0-9.]+)( [KMGT])?")


def test_a_training_run_prints_no_noise_and_real_flops(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    result = run_cli("cvexp-train", *CLI_TINY, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for noise in ("litlogger", "LeafSpec", "Total FLOPs: 0\n", "Total FLOPs: 0 "):
        assert noise not in output, output
    for total in FLOPS_TOTAL.finditer(output):
        assert float(total.group(1)) > 0, output
    # the first run on this copy decodes it into the cache, and says so, with the time taken
    source = tmp_path / "data" / "cifar-10-batches-py"
    assert re.search(rf"Decoding CIFAR-10 from {re.escape(str(source))} once into \S+\.pt", output)
    assert re.search(r"Decoding CIFAR-10 done in \d+ s", output), output


def tiny_vgg() -> VGG:
    return VGG(depth=11, width=0.03125, head_width=16, dropout=0.0)


def test_the_model_summary_counts_flops_of_one_cifar_image() -> None:
    classifier = ImageClassifier(tiny_vgg())
    assert torch.equal(classifier.example_input_array, torch.zeros(1, 3, 32, 32))
    assert ModelSummary(classifier).total_flops > 0
    # an attribute, not a buffer: checkpoints and state dicts do not change
    without = ImageClassifier(tiny_vgg())
    without.example_input_array = None
    assert set(classifier.state_dict()) == set(without.state_dict())


def test_a_compiled_net_gets_no_example_input() -> None:
    """The summary's forward of batch 1 would compile a graph of its own before training's."""
    assert ImageClassifier(tiny_vgg(), compile=True).example_input_array is None
