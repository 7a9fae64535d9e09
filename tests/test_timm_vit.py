"""Fine-tuning a timm model: offline weights, preprocessing, linear probe, layer decay, clear errors."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from cvexp.classifier import ImageClassifier
from cvexp.errors import UserError
from cvexp.evaluation import evaluate
from cvexp.models.timm_vit import TimmClassifier
from cvexp.training import train

NAME = "vit_tiny_patch16_224"


@pytest.fixture(autouse=True)
def unreachable_hub(monkeypatch) -> None:
    """Every way timm could fetch weights raises, as on a machine with no network."""

    def offline(*args, **kwargs):
        raise ConnectionError("hub unreachable (patched by the test)")

    import timm.models._builder as builder

    for name in (
        "load_state_dict_from_hf",
        "load_state_dict_from_url",
        "download_cached_file",
        "load_custom_from_hf",
    ):
        monkeypatch.setattr(builder, name, offline, raising=False)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A timm ViT-Tiny's random-init state dict (1000 classes) as .safetensors."""
    torch.manual_seed(0)
    state = timm.create_model(NAME, pretrained=False).state_dict()
    path = tmp_path_factory.mktemp("weights") / "vit_tiny.safetensors"
    safetensors.torch.save_file(state, str(path))
    return path, state


def test_local_weights_load_through_timm_without_network(weights_file) -> None:
    path, saved = weights_file
    net = TimmClassifier(name=NAME, weights=str(path), num_classes=10)
    loaded = net.model.state_dict()
    for key, tensor in saved.items():
        if key.startswith("head."):
            continue
        torch.testing.assert_close(loaded[key], tensor, msg=key)
    assert net.model.get_classifier().out_features == 10  # the 1000-class head was replaced


def test_a_smaller_resolution_interpolates_the_position_embeddings(weights_file) -> None:
    path, saved = weights_file
    net = TimmClassifier(name=NAME, weights=str(path), img_size=64)
    assert net.input_size == (64, 64)
    assert net.model.pos_embed.shape == (1, 1 + 16, 192)  # 4 x 4 patches and the class token
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    torch.testing.assert_close(
        net.model.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"]
    )


def test_preprocessing_follows_the_pretrained_config() -> None:
    net = TimmClassifier(name=NAME, pretrained=False)
    config = timm.data.resolve_model_data_config(net.model)
    x = torch.rand(2, 3, 32, 32)
    resized = F.interpolate(
        x, size=config["input_size"][1:], mode=config["interpolation"], align_corners=False
    )
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(net.preprocess(x), (resized - mean) / std)
    assert net.input_size == (224, 224)
    assert config["mean"] != (0.4914, 0.4822, 0.4465)  # not CIFAR's statistics


def test_linear_probe_changes_only_the_head() -> None:
    torch.manual_seed(0)
    net = TimmClassifier(name=NAME, pretrained=False, img_size=32, finetune="linear_probe")
    classifier = ImageClassifier(
        net, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.05)
    )
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = classifier.optimizer_factory(params=classifier.parameter_groups())
    classifier.train()
    assert not net.model.blocks[0].training  # the frozen backbone stays in eval mode
    F.cross_entropy(classifier(torch.rand(4, 3, 32, 32)), torch.arange(4)).backward()
    optimizer.step()
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"model.head.weight", "model.head.bias"}


def test_layer_decay_scales_the_learning_rate_per_layer() -> None:
    net = TimmClassifier(name=NAME, pretrained=False, img_size=32, layer_decay=0.5)
    classifier = ImageClassifier(
        net, optimizer=functools.partial(torch.optim.AdamW, lr=1.0, weight_decay=0.05)
    )
    groups = classifier.parameter_groups()
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.5 ** (len(net.model.blocks) + 1))
    assert any(g.get("weight_decay") == 0.0 for g in groups)  # biases, norms, embeddings
    assert any("weight_decay" not in g for g in groups)  # the optimiser's own decay for the rest


@pytest.mark.parametrize("layer_decay", [None, 0.75])
def test_position_embeddings_and_class_token_get_no_weight_decay(layer_decay) -> None:
    """What the wrapper's docstring promises, as timm's `no_weight_decay()` names them."""
    net = TimmClassifier(name=NAME, pretrained=False, img_size=32, layer_decay=layer_decay)
    assert {"pos_embed", "cls_token"} <= set(net.model.no_weight_decay())
    decay_of = {
        id(p): g.get("weight_decay", "optimiser default")
        for g in ImageClassifier(net).parameter_groups()
        for p in g["params"]
    }
    assert decay_of[id(net.model.pos_embed)] == 0.0
    assert decay_of[id(net.model.cls_token)] == 0.0
    assert decay_of[id(net.model.blocks[0].attn.qkv.bias)] == 0.0
    assert decay_of[id(net.model.blocks[0].attn.qkv.weight)] == "optimiser default"
    assert len(decay_of) == sum(1 for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pretrained": True}, r"may be offline.*model\.net\.weights"),
        ({"weights": "/nowhere/model.safetensors"}, r"Weights file not found.*model\.net\.weights"),
        ({"name": "vit_does_not_exist"}, "timm has no model named"),
    ],
    ids=["download-fails", "missing-file", "unknown-name"],
)
def test_weights_errors_are_clear(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        TimmClassifier(**{"name": NAME, **kwargs})


def test_weights_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file(
        timm.create_model("resnet18", pretrained=False).state_dict(), str(path)
    )
    with pytest.raises(UserError, match=rf"do not fit {NAME}.*model\.net\.weights"):
        TimmClassifier(name=NAME, weights=str(path))


def test_fast_dev_run_then_eval_without_network(
    compose_train, tmp_path: Path, weights_file, data_root: Path
) -> None:
    path, _ = weights_file
    summary = train(
        compose_train(
            "model=timm_vit",
            f"model.net.name={NAME}",
            f"model.net.weights={path}",
            "model.net.img_size=32",
            "trainer.max_epochs=1",
        )
    )
    assert summary["status"] == "completed" and summary["model"] == "timm_vit"
    # the checkpoint names pretrained weights and a file; eval must need neither
    path.rename(path.with_suffix(".moved"))
    try:
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="cvexp.conf", version_base="1.3"):
            cfg = compose(
                "eval",
                overrides=[
                    f"ckpt_path={summary['best_model_path']}",
                    f"data.root={data_root}",
                    "trainer.accelerator=cpu",
                    "trainer.enable_progress_bar=false",
                ],
                return_hydra_config=True,
            )
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "eval")
        metrics = evaluate(cfg)
    finally:
        path.with_suffix(".moved").rename(path)
        GlobalHydra.instance().clear()
    assert metrics["test_images"] == 60
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()


def test_attention_maps_of_a_timm_vit_are_its_softmax_weights() -> None:
    torch.manual_seed(0)
    net = TimmClassifier(name=NAME, pretrained=False, img_size=32).eval()
    x = torch.rand(2, 3, 32, 32)
    maps = net.attention_maps(x)
    assert len(maps) == len(net.model.blocks) and maps[0].shape == (
        2,
        3,
        5,
        5,
    )  # 3 heads, 4 patches + class token
    torch.testing.assert_close(maps[-1].sum(-1), torch.ones(2, 3, 5))
    # block 0 by hand, with timm's own modules: its input is the embedded tokens after norm1
    block = net.model.blocks[0]
    tokens = net.model.norm_pre(net.model._pos_embed(net.model.patch_embed(net.preprocess(x))))
    attn = block.attn
    qkv = attn.qkv(block.norm1(tokens)).reshape(2, 5, 3, 3, 64).permute(2, 0, 3, 1, 4)
    expected = (qkv[0] @ qkv[1].transpose(-2, -1) / 8.0).softmax(-1)
    torch.testing.assert_close(maps[0], expected)
    assert all(not b.attn._forward_hooks for b in net.model.blocks)
