"""Seeing inside the networks: figure functions, hooks, rollout, the training callback, the command."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cvexp.checkpoint_figures import visualize
from cvexp.errors import UserError
from cvexp.models.intermediates import take_indices
from cvexp.models.vgg import VGG
from cvexp.models.vit import VisionTransformer
from cvexp.training import train
from cvexp.viz.attention import attention_figure, attention_rollout
from cvexp.viz.features import (
    feature_grid_figure,
    filters_figure,
    normalised_rgb_filters,
    overview_figure,
)
from cvexp.viz.figures import save_figure
from cvexp.viz.network import layer_outputs, spatial_convs
from tests.conftest import run_cli, snapshot
from tests.tiny_checkpoint import write_tiny_checkpoint

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


def decoded_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        return image.size


def test_figures_are_written_and_decode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = VGG(depth=11).eval()
    image = torch.rand(3, 32, 32)
    maps = layer_outputs(net, image)
    convs = spatial_convs(net)
    figures = {
        "filters0": filters_figure(convs[0][1], title="first"),
        "filters5": filters_figure(convs[5][1], title="deep"),
        "grid": feature_grid_figure(maps[0], title="grid", k=9),
        "overview": overview_figure(
            image, {f"layer {i}": m for i, m in enumerate(maps)}, title="o"
        ),
        "attention": attention_figure(
            image,
            VisionTransformer(**TINY_VIT).attention_maps(image[None]),
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


def test_vgg_intermediates_match_running_the_layers_by_hand() -> None:
    torch.manual_seed(0)
    net = VGG(depth=11, batch_norm=True).eval()
    image = torch.rand(1, 3, 32, 32)
    chosen = net.forward_intermediates(image, indices=[0, 3, -1], intermediates_only=True)
    with torch.no_grad():
        x, by_hand = net.normalize(image), []
        for module in net.features:
            x = module(x)
            if isinstance(module, torch.nn.ReLU):
                by_hand.append(x.clone())
    assert len(by_hand) == 8
    for got, expected in zip(chosen, [by_hand[0], by_hand[3], by_hand[7]], strict=True):
        torch.testing.assert_close(got, expected)
    features, every = net.forward_intermediates(image)
    assert len(every) == 8
    torch.testing.assert_close(net.forward_head(features), net(image))


def test_layer_indices_are_checked() -> None:
    assert take_indices(13, [0, -1]) == [0, 12]
    assert take_indices(13, 2) == [11, 12]
    assert take_indices(3, None) == [0, 1, 2]
    with pytest.raises(IndexError, match="layer 13 is out of range"):
        take_indices(13, [13])


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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "tags"),
    [
        ("tiny", {"viz/predictions", "viz/filters", "viz/feature_maps"}),
        ("vit", {"viz/predictions", "viz/feature_maps", "viz/attention"}),
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


@pytest.mark.slow
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
        "feature_maps/layer07.png",
        "filters/layer00.png",
        "filters/layer04.png",
        "filters/layer07.png",
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
        "attention/rollout.png",
        "feature_maps/layer00.png",
        "feature_maps/layer01.png",
        "overview.png",
        "prediction.png",
        "vit_pipeline.png",
    ]

    # the failing inputs are in test_bad_inputs.py; the runs it read are unchanged
    assert snapshot(tmp_path / "cnn") == cnn_files
    # without the dataset and without image=, the message says to pass an image
    cfg = OmegaConf.merge(base, {"ckpt_path": cnn, "data": {"root": str(tmp_path / "nothing")}})
    with pytest.raises(UserError, match="pass image="):
        visualize(cfg)


SMALL_RESNET = [
    "model.net.blocks=[1,1,1,1]",
    "model.net.widths=[8,8,8,8]",
    "model.net.stem_width=8",
    "model.net.num_heads=2",
]


@pytest.mark.parametrize("model", ["resnet26", "resnet26_sasa", "resnet26_full_sasa"])
def test_visualize_draws_every_resnet26_variant(
    compose_train, tmp_path: Path, data_root: Path, model: str
) -> None:
    ckpt = train(
        compose_train(
            f"model={model}", *SMALL_RESNET, "trainer.max_epochs=1", run_dir=tmp_path / "r"
        )
    )["best_model_path"]
    cfg = OmegaConf.create(
        {
            "ckpt_path": ckpt,
            "data": {"root": str(data_root)},
            "paths": {"output_dir": str(tmp_path / "viz")},
            "image": None,
            "test_index": 3,
            "layers": None,
            "top_k": 4,
            "trust_checkpoint": False,
        }
    )
    files = {p.relative_to(tmp_path / "viz").as_posix() for p in visualize(cfg)["files"]}
    # the stem and four bottlenecks: five layers of feature maps
    assert {f"feature_maps/layer{i:02d}.png" for i in range(5)} <= files
    assert "overview.png" in files and "prediction.png" in files
    has_filters = any(f.startswith("filters/") for f in files)
    has_attention = any(f.startswith("attention/layer") for f in files)
    assert has_filters == (model != "resnet26_full_sasa")  # full attention: no spatial conv
    assert has_attention == (model != "resnet26")


def visualize_config(ckpt: Path, out: Path, **keys) -> OmegaConf:
    """cvexp-visualize's keys, as conf/visualize.yaml has them, for a direct call."""
    return OmegaConf.create(
        {
            "ckpt_path": str(ckpt),
            "data": {"root": str(out.parent / "no_data")},
            "paths": {"output_dir": str(out)},
            "image": None,
            "test_index": 0,
            "layers": None,
            "top_k": 4,
            "trust_checkpoint": False,
            **keys,
        }
    )


def test_a_vgg16_leaves_no_figure_open(tmp_path: Path) -> None:
    # VGG16 has 13 conv layers: 28 figures, more than matplotlib's 20 open at once
    ckpt = write_tiny_checkpoint(tmp_path / "vgg16.ckpt", "vgg16")
    picture = tmp_path / "cat.png"
    Image.new("RGB", (32, 32), (200, 120, 40)).save(picture)
    plt.close("all")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="More than 20 figures have been opened")
        done = visualize(visualize_config(ckpt, tmp_path / "viz", image=str(picture)))
    assert len(done["files"]) == 28
    assert plt.get_fignums() == []


def test_a_twelve_class_model_names_its_extra_classes(tmp_path: Path, data_root: Path) -> None:
    ckpt = write_tiny_checkpoint(tmp_path / "twelve.ckpt", "resnet", num_classes=12)
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["state_dict"]["net.head.bias"][11] = (
        100.0  # it predicts class 11, whatever the image
    )
    torch.save(checkpoint, ckpt)
    plt.close("all")
    done = visualize(visualize_config(ckpt, tmp_path / "viz", data={"root": str(data_root)}))
    assert done["predicted"] == "class 11"
    assert (tmp_path / "viz" / "prediction.png").stat().st_size > 0
    assert plt.get_fignums() == []


@pytest.mark.slow
def test_visualize_cli_on_a_twelve_class_model(tmp_path: Path) -> None:
    ckpt = write_tiny_checkpoint(tmp_path / "twelve.ckpt", "resnet", num_classes=12)
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["state_dict"]["net.head.bias"][10] = 100.0
    torch.save(checkpoint, ckpt)
    picture = tmp_path / "cat.png"
    Image.new("RGB", (32, 32), (200, 120, 40)).save(picture)
    result = run_cli("cvexp-visualize", f"ckpt_path={ckpt}", f"image={picture}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    (out,) = (tmp_path / "outputs" / "visualize").glob("*/*")
    assert (out / "prediction.png").is_file()


def test_without_data_or_image_the_message_names_what_works(tmp_path: Path) -> None:
    ckpt = write_tiny_checkpoint(tmp_path / "vit.ckpt", "vit")
    with pytest.raises(UserError) as refused:
        visualize(visualize_config(ckpt, tmp_path / "viz"))
    message = str(refused.value)
    assert "No CIFAR-10 found" in message and "never downloads" in message
    assert "image=" in message and "data.root=" in message
    assert (
        "data.download" not in message
    )  # cvexp-visualize never downloads: it would change nothing
    assert not (tmp_path / "viz").exists()
