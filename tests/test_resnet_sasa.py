"""Local self-attention against a direct reference, and the three ResNet-26 variants end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from cvexp.models.resnet_sasa import LocalSelfAttention2d, ResNet
from cvexp.train import train

VARIANTS = ("resnet26", "resnet26_sasa", "resnet26_full_sasa")


def reference_pixel(layer: LocalSelfAttention2d, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """The layer's output at (i, j) of image 0, written as the paper's sum, one neighbour at a time."""
    q, k, v = layer.qkv(x)[0].chunk(3, dim=0)  # each (C, H, W)
    _, h, w = q.shape
    d, radius = layer.head_dim, layer.kernel_size // 2
    out = torch.zeros(layer.out_channels)
    for head in range(layer.num_heads):
        ch = slice(head * d, (head + 1) * d)
        logits, values = [], []
        for a in range(-radius, radius + 1):
            for b in range(-radius, radius + 1):
                if not (0 <= i + a < h and 0 <= j + b < w):
                    continue  # outside the image: not in the softmax at all
                rel = torch.cat(
                    [layer.rel_rows[head, :, a + radius], layer.rel_cols[head, :, b + radius]]
                )
                logits.append(q[ch, i, j] @ (k[ch, i + a, j + b] + rel))
                values.append(v[ch, i + a, j + b])
        weights = torch.stack(logits).softmax(dim=0)
        out[ch] = (weights[:, None] * torch.stack(values)).sum(0)
    return out


@pytest.mark.parametrize("pixel", [(0, 0), (0, 5), (3, 4), (8, 8), (4, 8)])
def test_layer_matches_the_paper_sum_at_corners_edges_and_inside(pixel: tuple[int, int]) -> None:
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(6, 8, kernel_size=5, num_heads=2)
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        out = layer(x)
        expected = reference_pixel(layer, x, *pixel)
    torch.testing.assert_close(out[0, :, pixel[0], pixel[1]], expected, rtol=1e-5, atol=1e-5)


def test_padding_is_masked_not_attended_as_zeros() -> None:
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(4, 4, kernel_size=3, num_heads=1)
    _, attention = layer(torch.randn(1, 4, 5, 5), return_attention=True)  # (B, heads, 9, H, W)
    corner = attention[0, 0, :, 0, 0].view(3, 3)
    assert torch.all(corner[0] == 0) and torch.all(corner[:, 0] == 0)  # above and left of (0, 0)
    torch.testing.assert_close(corner[1:, 1:].sum(), torch.tensor(1.0))
    torch.testing.assert_close(attention.sum(dim=2), torch.ones(1, 1, 5, 5))


def test_translating_the_input_translates_the_output_away_from_borders() -> None:
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(4, 8, kernel_size=3, num_heads=2)
    x = torch.randn(1, 4, 12, 12)
    shifted = torch.roll(x, shifts=(1, 1), dims=(2, 3))
    with torch.no_grad():
        out, out_shifted = layer(x), layer(shifted)
    # pixels whose whole window stays inside the image, in both inputs
    torch.testing.assert_close(out_shifted[..., 3:-2, 3:-2], out[..., 2:-3, 2:-3])


def test_drop_in_for_a_3x3_conv_with_stride_by_pooling() -> None:
    x = torch.randn(2, 16, 8, 8)
    for stride in (1, 2):
        conv = nn.Conv2d(16, 32, 3, stride=stride, padding=1)
        attention = LocalSelfAttention2d(16, 32, stride=stride)
        assert attention(x).shape == conv(x).shape
    with pytest.raises(ValueError, match="odd"):
        LocalSelfAttention2d(8, 8, kernel_size=4)
    with pytest.raises(ValueError, match="heads of an even width"):
        LocalSelfAttention2d(8, 12, num_heads=4)


def test_three_networks_shapes_gradients_and_fewer_parameters_with_attention(
    compose_train,
) -> None:
    counts = {}
    for name in VARIANTS:
        cfg = compose_train(f"model={name}")
        torch.manual_seed(0)
        net = instantiate(cfg.model.net)
        assert isinstance(net, ResNet)
        logits = net(torch.rand(2, 3, 32, 32))
        assert logits.shape == (2, 10) and torch.isfinite(logits).all()
        logits.logsumexp(dim=1).sum().backward()
        for param_name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (name, param_name)
        counts[name] = sum(p.numel() for p in net.parameters())
        uses_attention = any(isinstance(m, LocalSelfAttention2d) for m in net.modules())
        assert uses_attention == (name != "resnet26")
        stem_attends = any(isinstance(m, LocalSelfAttention2d) for m in net.stem.modules())
        assert stem_attends == (name == "resnet26_full_sasa")
    # as in the paper's table: attention variants have fewer parameters than the baseline
    assert counts["resnet26_sasa"] < counts["resnet26"]
    assert counts["resnet26_full_sasa"] < counts["resnet26"]


@pytest.mark.parametrize("name", VARIANTS)
def test_fast_dev_run_through_the_real_config(compose_train, tmp_path: Path, name: str) -> None:
    cfg = compose_train(f"model={name}", "trainer.fast_dev_run=true", "data.batch_size=4")
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["model"] == name
    written = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert written["params"] == summary["params"]


def test_the_speed_comparison_runs() -> None:
    from cvexp.benchmarks.conv_vs_attention import measure

    result = measure(batch_size=2, steps=1, repeats=1, with_memory=False)
    assert set(result["images_per_s"]) == {"resnet26", "resnet26_sasa", "resnet26_full_sasa"}
    assert result["ratio"] > 0 and result["ratio_full_attention"] > 0
