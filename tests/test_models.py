"""VGG: shapes, gradients, BN flag, preprocessing owned by the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cvexp.models.vgg import VGG


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
