"""Seeing inside the networks: figure functions, hooks, rollout, the training callback, the command."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cvexp.errors import UserError
from cvexp.models.vgg import VGG
from cvexp.models.vit import VisionTransformer
from cvexp.train import train
from cvexp.visualize import visualize
from cvexp.viz.attention import attention_figure, attention_rollout
from cvexp.viz.features import (
    conv_blocks,
    feature_grid_figure,
    feature_maps,
    filters_figure,
    normalised_rgb_filters,
    overview_figure,
    select_layers,
)
from cvexp.viz.figures import save_figure
from tests.conftest import run_cli, snapshot

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


def decoded_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        return image.size


def test_figures_are_written_and_decode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = VGG(depth=11).eval()
    image = torch.rand(3, 32, 32)
    maps = feature_maps(net, image)
    figures = {
        "filters0": filters_figure(conv_blocks(net.features)[0][2], title="first"),
        "filters5": filters_figure(conv_blocks(net.features)[5][2], title="deep"),
        "grid": feature_grid_figure(next(iter(maps.values())), title="grid", k=9),
        "overview": overview_figure(image, {k: v for k, v in maps.items()}, title="overview"),
        "attention": attention_figure(
            image,
            VisionTransformer(**TINY_VIT).get_attention_maps(image[None]),
            blocks=[0, 1],
            title="vit",
        ),
    }
    for name, fig in figures.items():
        width, height = fig.get_size_inches() * fig.dpi
        path = save_figure(fig, tmp_path / f"{name}.png")
        assert decoded_size(path) == (round(width), round(height)), name
    assert not plt.get_fignums()  # every figure closed


def test_filter_grid_shows_the_normalised_first_layer_weights() -> None:
    conv = VGG(depth=11).features[0]
    shown = normalised_rgb_filters(conv)  # (64, 3, 3, 3): what the grid draws
    for i in (0, 17, 63):
        w = conv.weight[i].detach()
        expected = ((w - w.min()) / (w.max() - w.min())).permute(1, 2, 0)
        torch.testing.assert_close(shown[i], expected)
    assert shown.min() == 0 and shown.max() == 1


def test_feature_map_hooks_match_running_the_layers_by_hand() -> None:
    torch.manual_seed(0)
    net = VGG(depth=11, batch_norm=True).eval()
    image = torch.rand(3, 32, 32)
    before = net(image[None]).detach()
    recorded = feature_maps(net, image, layers=[0, 3, -1])
    blocks = conv_blocks(net.features)
    assert list(recorded) == [blocks[0][0], blocks[3][0], blocks[-1][0]]
    with torch.no_grad():
        x = net.normalize(image[None])
        by_hand = {}
        for module in net.features:
            x = module(x)
            for conv_name, activation, _ in blocks:
                if module is activation:
                    by_hand[conv_name] = x[0].clone()
    for name, maps in recorded.items():
        torch.testing.assert_close(maps, by_hand[name])
    # the hooks are gone and the network computes what it did before
    assert all(not m._forward_hooks for m in net.modules())
    torch.testing.assert_close(net(image[None]), before)


def test_layer_indices_are_checked() -> None:
    assert select_layers(13, [0, -1]) == [0, 12]
    with pytest.raises(IndexError, match="layer 13 is out of range"):
        select_layers(13, [13])


def test_attention_rollout_by_hand() -> None:
    # two blocks, one head, two tokens
    a1 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    a2 = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    # with the residual: 0.5 A + 0.5 I, rows renormalised (they already sum to 1)
    r1 = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    r2 = torch.tensor([[0.75, 0.25], [0.0, 1.0]])
    expected = r2 @ r1  # [[0.8125, 0.1875], [0.25, 0.75]]
    rollout = attention_rollout([a1[None, None], a2[None, None]])
    torch.testing.assert_close(rollout[0], expected)
    assert rollout[0, 0, 0].item() == pytest.approx(0.8125)
    # heads are averaged first
    two_heads = torch.stack([a1, torch.eye(2)])[None]  # (1, 2, 2, 2)
    torch.testing.assert_close(
        attention_rollout([two_heads])[0],
        0.5 * (0.5 * a1 + 0.5 * torch.eye(2)) + 0.5 * torch.eye(2),
    )


@pytest.mark.parametrize(
    ("model", "tags"),
    [
        ("vgg16_bn", {"viz/predictions", "viz/filters", "viz/feature_maps"}),
        ("vit", {"viz/predictions", "viz/attention"}),
    ],
)
def test_training_callback_logs_images_to_tensorboard(
    compose_train, tmp_path: Path, model: str, tags: set
) -> None:
    extra = (
        ["model.net.embed_dim=32", "model.net.depth=2", "model.net.num_heads=2"]
        if model == "vit"
        else []
    )
    summary = train(
        compose_train(
            f"model={model}",
            *extra,
            "callbacks.feature_maps.every_n_epochs=1",
            "callbacks.feature_maps.num_images=4",
        )
    )
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    logged = set(events.Tags()["images"])
    assert tags <= logged, logged
    for tag in tags:
        assert [e.step for e in events.Images(tag)] == [0, 1]  # every epoch of the 2-epoch run
    assert "viz/seconds" in events.Tags()["scalars"]
    assert summary["status"] == "completed"


def test_visualize_command(compose_train, tmp_path: Path, data_root: Path) -> None:
    base = OmegaConf.create(
        {
            "data": {"root": str(data_root)},
            "paths": {"output_dir": str(tmp_path / "inproc")},
            "image": None,
            "test_index": 0,
            "layers": None,
            "top_k": 4,
            "trust_checkpoint": False,
        }
    )
    cnn = train(compose_train("trainer.max_epochs=1", run_dir=tmp_path / "cnn"))["best_model_path"]
    vit = train(
        compose_train(
            "model=vit",
            "model.net.embed_dim=32",
            "model.net.depth=2",
            "model.net.num_heads=2",
            "trainer.max_epochs=1",
            run_dir=tmp_path / "vit",
        )
    )["best_model_path"]
    cwd = tmp_path / "work"
    cwd.mkdir()
    cnn_files = snapshot(tmp_path / "cnn")
    result = run_cli(
        "cvexp-visualize",
        f"ckpt_path={cnn}",
        f"data.root={data_root}",
        "layers=[0,4,-1]",
        "top_k=4",
        cwd=cwd,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (out,) = list((cwd / "outputs" / "visualize").glob("*/*"))
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert names == [
        "feature_maps/layer00.png",
        "feature_maps/layer04.png",
        "feature_maps/layer12.png",
        "filters/layer00.png",
        "filters/layer04.png",
        "filters/layer12.png",
        "overview.png",
        "prediction.png",
    ]
    picture = tmp_path / "cat.png"
    Image.new("RGB", (64, 48), (200, 120, 40)).save(picture)
    result = run_cli(
        "cvexp-visualize", f"ckpt_path={vit}", f"image={picture}", "layers=[0,1]", cwd=cwd
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resized to 32x32" in result.stdout
    newest = max((cwd / "outputs" / "visualize").glob("*/*"), key=lambda p: p.stat().st_mtime)
    assert sorted(p.relative_to(newest).as_posix() for p in newest.rglob("*.png")) == [
        "attention/block00.png",
        "attention/block01.png",
        "overview.png",
        "prediction.png",
    ]

    # the failing inputs are in test_bad_inputs.py; the runs it read are unchanged
    assert snapshot(tmp_path / "cnn") == cnn_files
    # without the dataset and without image=, the message says to pass an image
    cfg = OmegaConf.merge(base, {"ckpt_path": cnn, "data": {"root": str(tmp_path / "nothing")}})
    with pytest.raises(UserError, match="pass image="):
        visualize(cfg)
