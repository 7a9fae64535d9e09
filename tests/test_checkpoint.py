"""cvexp.checkpoint: checkpoints written by earlier code keep loading and predicting the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cvexp import checkpoint as checkpoint_module
from cvexp.checkpoint import load_classifier, load_net_weights, read_checkpoint
from cvexp.errors import UserError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BEFORE_THE_LAYERS = FIXTURES / "tiny_vgg_2026-12-05.ckpt"


def fixture_input() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_a_checkpoint_written_before_the_layering_predicts_the_same_logits() -> None:
    expected = torch.load(FIXTURES / "tiny_vgg_2026-12-05.logits.pt", weights_only=True)
    classifier, checkpoint = load_classifier(BEFORE_THE_LAYERS)
    assert checkpoint["net_config"]["_target_"] == "cvexp.models.vgg.VGG"  # as it was written
    with torch.no_grad():
        logits = classifier(fixture_input())
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=0)


def test_a_net_that_moved_is_found_through_the_alias_table(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint naming an old import path loads from the new one, with the same logits."""
    checkpoint = torch.load(BEFORE_THE_LAYERS, map_location="cpu", weights_only=True)
    checkpoint["net_config"]["_target_"] = "cvexp.nets.old_place.VGG"  # where it used to live
    moved = tmp_path / "moved.ckpt"
    torch.save(checkpoint, moved)
    monkeypatch.setitem(
        checkpoint_module.MOVED_TARGETS, "cvexp.nets.old_place.VGG", "cvexp.models.vgg.VGG"
    )
    classifier, _ = load_classifier(moved)
    reference, _ = load_classifier(BEFORE_THE_LAYERS)
    with torch.no_grad():
        torch.testing.assert_close(classifier(fixture_input()), reference(fixture_input()))


def test_a_text_file_named_ckpt_is_called_what_it_is(tmp_path: Path) -> None:
    text = tmp_path / "notes.ckpt"
    text.write_text("epoch 3 was the best\n")
    with pytest.raises(UserError, match=r"is not a PyTorch checkpoint .*neither .* zip .* pickle"):
        read_checkpoint(text)


def test_a_folder_is_named_a_folder_with_the_file_to_pass(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"is a folder, not a checkpoint; .*last\.ckpt"):
        read_checkpoint(tmp_path)
    with pytest.raises(UserError, match=r"is a folder, not a weights file; pass init_from="):
        load_net_weights(torch.nn.Linear(2, 2), tmp_path)
