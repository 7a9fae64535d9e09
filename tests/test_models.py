"""VGG: shapes, gradients, BN flag, width, preprocessing owned by the model; and every model config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from cvexp.classifier import build_classifier
from cvexp.models.vgg import VGG
from cvexp.runtime.config import compose_config


@pytest.mark.parametrize("batch_norm", [True, False], ids=["vgg16_bn", "vgg16"])
def test_vgg16_shapes_gradients_and_no_nan(batch_norm: bool) -> None:
    torch.manual_seed(0)
    net = VGG(depth=16, batch_norm=batch_norm, num_classes=10)
    x = torch.rand(4, 3, 32, 32)
    features = net.forward_features(x)
    assert features.shape == (4, 512, 1, 1)
    logits = net(x)
    assert logits.shape == (4, 10)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert torch.isfinite(logits).all()


def test_batch_norm_flag_is_the_only_difference() -> None:
    with_bn, without = VGG(batch_norm=True), VGG(batch_norm=False)
    convs = [m for m in with_bn.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.features) == 13
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.features)
    # convs before BN carry no bias; without BN they do
    assert all(c.bias is None for c in convs)
    assert all(c.bias is not None for c in without.features if isinstance(c, nn.Conv2d))


def test_width_scales_every_conv_and_keeps_the_depth() -> None:
    quarter = VGG(depth=16, width=0.25)
    convs = [m for m in quarter.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert [c.out_channels for c in convs] == [
        16,
        16,
        32,
        32,
        64,
        64,
        64,
        128,
        128,
        128,
        128,
        128,
        128,
    ]
    assert quarter(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    full = sum(p.numel() for m in VGG(depth=16).features for p in m.parameters())
    small = sum(p.numel() for m in quarter.features for p in m.parameters())
    assert small / full == pytest.approx(1 / 16, rel=0.02)
    with pytest.raises(ValueError, match="width must be positive"):
        VGG(width=0.0)


def test_head_is_512_wide_unless_asked() -> None:
    linears = [m for m in VGG().classifier if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [512, 512, 10]
    wide = [m for m in VGG(head_width=4096).classifier if isinstance(m, nn.Linear)]
    assert wide[0].out_features == 4096


def test_model_owns_its_normalisation() -> None:
    net = VGG()
    x = torch.rand(2, 3, 32, 32)
    normalised = net.normalize(x)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    assert torch.allclose(normalised, (x - mean) / std)
    assert "normalize.mean" not in net.state_dict()  # not saved: the constructor owns it


def test_kaiming_init_keeps_activations_alive_without_bn() -> None:
    x = torch.rand(8, 3, 32, 32)
    torch.manual_seed(0)
    kaiming = VGG(batch_norm=False).eval()
    torch.manual_seed(0)
    default = VGG(batch_norm=False).eval()
    for module in default.modules():  # PyTorch's default init, as a plain nn.Conv2d would have
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.reset_parameters()
    # with the default init the deep no-BN stack shrinks its signal about tenfold
    assert kaiming.forward_features(x).std() > 5 * default.forward_features(x).std()


@pytest.mark.parametrize("depth", [11, 13, 19])
def test_other_depths(depth: int) -> None:
    assert VGG(depth=depth)(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_bad_depth_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="depth must be one of"):
        VGG(depth=17)


MODEL_CONFIGS = sorted(
    p.stem
    for p in (Path(__file__).resolve().parents[1] / "conf" / "model").glob("*.yaml")
    if not p.stem.startswith("_")
)
# keep the timm models offline and small: random init, a tiny input
OFFLINE = {"timm": ["model.net.pretrained=false", "model.net.img_size=32"]}


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(m, marks=pytest.mark.slow) if m.startswith(("resnet", "timm")) else m
        for m in MODEL_CONFIGS
    ],
)
def test_every_model_config_builds_trains_and_shows_its_layers(model: str, tmp_path: Path) -> None:
    """timm-style: every conf/model/*.yaml composes, builds, runs forward and backward on a
    32x32 batch, and returns its per-layer outputs (and attention maps where it has them)."""
    extra = OFFLINE["timm"] if model.startswith("timm") else []
    cfg = compose_config("train", [f"model={model}", *extra], tmp_path)
    torch.manual_seed(0)
    classifier = build_classifier(cfg.model)
    net = classifier.net
    x = torch.rand(2, 3, 32, 32)
    logits = classifier(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([1, 2])).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    features, layers = net.eval().forward_intermediates(x)
    assert len(layers) >= 1 and all(t.ndim == 4 and t.shape[0] == 2 for t in layers)
    assert torch.isfinite(features).all()
    last = net.forward_intermediates(x, indices=1, intermediates_only=True)
    torch.testing.assert_close(last[0], layers[-1])
    attention = net.attention_maps(x) if hasattr(net, "attention_maps") else []
    has_attention = model in ("vit", "resnet26_sasa", "resnet26_full_sasa") or "timm_vit" in model
    assert bool(attention) == has_attention
    GlobalHydra.instance().clear()
