"""Local self-attention against a direct reference, and the three ResNet-26 variants end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from cvexp.models import resnet_sasa
from cvexp.models.resnet_sasa import LocalSelfAttention2d, ResNet
from cvexp.training import train

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


@pytest.mark.parametrize("pixel", [(0, 0), (0, 5), (3, 2), (6, 5)])
def test_dense_path_matches_the_paper_sum(pixel: tuple[int, int]) -> None:
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(6, 8, kernel_size=5, num_heads=2)
    x = torch.randn(2, 6, 7, 6)
    assert layer.uses_dense_path(7, 6)  # 42 pixels <= 2 x 5^2
    with torch.no_grad():
        out = layer(x)
        expected = reference_pixel(layer, x, *pixel)
    torch.testing.assert_close(out[0, :, pixel[0], pixel[1]], expected, rtol=1e-5, atol=1e-5)


def straightforward(layer: LocalSelfAttention2d, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(out, attention) as the layer first computed them, by autograd: q . k over k*k shifted
    views of the zero-padded keys, masked at the border, and the weighted sum of as many views
    of the values."""
    b, _, h, w = x.shape
    k, p = layer.kernel_size, layer.kernel_size // 2
    heads, d = layer.num_heads, layer.head_dim
    q, key, value = layer.qkv(x).chunk(3, dim=1)
    q = q.reshape(b, heads, d, h, w)
    key = F.pad(key, (p, p, p, p)).reshape(b, heads, d, h + 2 * p, w + 2 * p)
    value = F.pad(value, (p, p, p, p)).reshape(b, heads, d, h + 2 * p, w + 2 * p)
    windows = [(dy, dx) for dy in range(k) for dx in range(k)]  # offset index dy*k + dx
    logits = torch.einsum("bhdyx,hdo->bhoyx", q, layer.relative_embeddings())
    content = torch.stack(
        [(q * key[..., dy : dy + h, dx : dx + w]).sum(2) for dy, dx in windows], dim=2
    )
    valid = layer.valid_neighbours(h, w, x.device)
    attention = (logits + content).masked_fill(~valid, float("-inf")).softmax(dim=2)
    out = sum(
        attention[:, :, o : o + 1] * value[..., dy : dy + h, dx : dx + w]
        for o, (dy, dx) in enumerate(windows)
    )
    return layer.pool(out.reshape(b, layer.out_channels, h, w)), attention


@pytest.mark.parametrize(
    ("size", "kernel_size", "stride", "chunk_elements", "dense"),
    [
        ((9, 7), 5, 1, 1 << 19, False),  # flat maps, all images in one chunk
        ((12, 20), 7, 2, 1, False),  # flat maps, one image per chunk; wider than tall
        ((7, 7), 5, 1, 1 << 19, True),  # small enough for dense attention
        ((3, 5), 3, 2, 1, True),
    ],
)
def test_fast_paths_equal_the_straightforward_offset_loop_with_gradients(
    monkeypatch: pytest.MonkeyPatch,
    size: tuple[int, int],
    kernel_size: int,
    stride: int,
    chunk_elements: int,
    dense: bool,
) -> None:
    monkeypatch.setattr(resnet_sasa, "CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(5, 8, kernel_size=kernel_size, num_heads=2, stride=stride)
    layer = layer.double()
    with torch.no_grad():
        layer.qkv.weight.mul_(3)  # peaked weights: the softmax is far from uniform
    assert layer.uses_dense_path(*size) == dense
    x = torch.randn(3, 5, *size, dtype=torch.float64, requires_grad=True)
    inputs = [x, *layer.parameters()]
    results = []
    for compute in (lambda: layer(x, return_attention=True), lambda: straightforward(layer, x)):
        out, attention = compute()
        assert attention.shape == (3, 2, kernel_size**2, *size)
        torch.manual_seed(1)  # the same loss for both: through the output and the weights
        loss = (out * torch.randn_like(out)).sum() + (attention * torch.randn_like(attention)).sum()
        results.append((out, attention, *torch.autograd.grad(loss, inputs)))
    for fast, expected in zip(*results, strict=True):
        torch.testing.assert_close(fast, expected, rtol=1e-10, atol=1e-10)


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


def test_bf16_mixed_precision_trains_and_matches_float32() -> None:
    """Under bf16 autocast (the CPU presets' precision) the windowed attention runs in float32:
    the step works (it crashed on a dtype mismatch in the backward) and its output is float32."""
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(8, 8, kernel_size=3, num_heads=2)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    assert not layer.uses_dense_path(6, 6)
    reference = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = layer(x)
    assert mixed.dtype == torch.float32
    # only the 1x1 q/k/v projection ran in bf16 (8 significant bits)
    assert torch.allclose(mixed, reference, atol=0.1, rtol=0.05)
    mixed.square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())
    assert x.grad is not None and torch.isfinite(x.grad).all()


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


@pytest.mark.parametrize(("size", "kernel_size", "stride"), [((9, 7), 5, 1), ((12, 20), 7, 2)])
def test_the_exporters_path_equals_the_straightforward_offset_loop(
    monkeypatch: pytest.MonkeyPatch, size: tuple[int, int], kernel_size: int, stride: int
) -> None:
    """Under torch.export or the TorchScript tracer the windowed path computes out of place over
    the whole batch (no chunks, no autograd.Function): the same output and weights."""
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(5, 8, kernel_size=kernel_size, num_heads=2, stride=stride)
    layer = layer.double()
    with torch.no_grad():
        layer.qkv.weight.mul_(3)  # peaked weights: the softmax is far from uniform
    assert not layer.uses_dense_path(*size)
    x = torch.randn(3, 5, *size, dtype=torch.float64)
    with torch.no_grad():
        expected = straightforward(layer, x)
        monkeypatch.setattr(resnet_sasa, "_exporting", lambda: True)
        monkeypatch.setattr(resnet_sasa._WindowAttention, "apply", None)  # not this path
        got = layer(x, return_attention=True)
    for exported, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(exported, reference, rtol=1e-10, atol=1e-10)
