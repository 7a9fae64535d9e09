"""The scratch ViT: attention paths agree, the formulas hold, positions matter, it trains."""

from __future__ import annotations

import math

import pytest
import torch

from cvexp.models import vit as vit_module
from cvexp.models.vit import (
    MultiHeadSelfAttention,
    VisionTransformer,
    explicit_attention,
    sinusoidal_table,
)
from cvexp.training import train

SMALL = {"embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0}


def qkv(b=2, h=4, t=17, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, d, generator=g) for _ in range(3)]


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_fused_and_explicit_attention_agree(masked: bool) -> None:
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(dim=32, num_heads=4).eval()
    x = torch.randn(3, 17, 32)
    mask = None
    if masked:  # a causal mask: every row keeps at least itself
        mask = torch.ones(17, 17, dtype=torch.bool).tril()
    fused, none = attn(x, mask)
    explicit, weights = attn(x, mask, return_attention=True)
    assert none is None and weights.shape == (3, 4, 17, 17)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    if masked:
        assert bool((weights.masked_select(~mask) == 0).all())


def test_explicit_path_is_the_formula() -> None:
    q, k, v = qkv()
    out, weights = explicit_attention(q, k, v)
    # softmax(Q K^T / sqrt(d_k)) V, element by element for one head of one sample
    b, h = 1, 2
    d_k = q.shape[-1]
    scores = [
        [sum(q[b, h, i, c] * k[b, h, j, c] for c in range(d_k)) / math.sqrt(d_k) for j in range(17)]
        for i in range(17)
    ]
    for i in (0, 5, 16):
        exps = [math.exp(s) for s in scores[i]]
        row = [e / sum(exps) for e in exps]
        torch.testing.assert_close(weights[b, h, i], torch.tensor(row), rtol=1e-4, atol=1e-6)
        expected = [sum(row[j] * v[b, h, j, c] for j in range(17)) for c in range(d_k)]
        torch.testing.assert_close(out[b, h, i], torch.tensor(expected), rtol=1e-4, atol=1e-5)


def test_attention_weights_are_distributions() -> None:
    torch.manual_seed(0)
    net = VisionTransformer(**SMALL).eval()
    maps = net.attention_maps(torch.rand(2, 3, 32, 32))
    assert len(maps) == 2
    for weights in maps:
        assert weights.shape == (2, 4, 65, 65)  # 64 patches + the class token
        assert bool((weights >= 0).all())
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 65))


def test_sinusoidal_table_is_the_course_formula() -> None:
    table = sinusoidal_table(65, 32)
    for i in range(65):
        for j in range(32):
            expected = (
                math.sin(i / 10000 ** (j / 32))
                if j % 2 == 0
                else math.cos(i / 10000 ** ((j - 1) / 32))
            )
            assert table[i, j].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("pos_embed", "changes"), [("sinusoidal", True), ("learned", True), ("none", False)]
)
def test_permuting_patches_matters_only_with_positions(pos_embed: str, changes: bool) -> None:
    torch.manual_seed(0)
    net = VisionTransformer(**SMALL, pos_embed=pos_embed).eval()
    if pos_embed == "learned":
        torch.nn.init.normal_(net.pos_embed, std=1.0)
    x = torch.rand(2, 3, 32, 32)
    # swap patches: a permutation of the 8 x 8 grid of 4 x 4 patches
    patches = x.reshape(2, 3, 8, 4, 8, 4).permute(0, 2, 4, 1, 3, 5).reshape(2, 64, 3, 4, 4)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    shuffled = (
        patches[:, perm].reshape(2, 8, 8, 3, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(2, 3, 32, 32)
    )
    assert not torch.equal(shuffled, x)
    same = torch.allclose(net(x), net(shuffled), atol=1e-5)
    assert same is not changes


def test_patch_embedding_is_a_linear_map_of_flattened_patches() -> None:
    torch.manual_seed(0)
    net = VisionTransformer(**SMALL)
    x = torch.rand(1, 3, 32, 32)
    tokens = net.patch_embed(x)  # (1, 64, 32)
    # patch (row 2, col 5): pixels [8:12, 20:24], flattened channel-major
    patch = x[0, :, 8:12, 20:24].reshape(-1)
    torch.testing.assert_close(tokens[0, 2 * 8 + 5], net.patch_embed.proj(patch))


@pytest.mark.parametrize("pos_embed", ["sinusoidal", "learned", "none"])
def test_shapes_gradients_no_nan(pos_embed: str) -> None:
    torch.manual_seed(0)
    net = VisionTransformer(**SMALL, pos_embed=pos_embed, drop_path_rate=0.1, drop_rate=0.1)
    x = torch.rand(4, 3, 32, 32)
    assert net.forward_features(x).shape == (4, 65, 32)
    logits = net(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_training_uses_the_fused_path(monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("the explicit path ran in a training forward")

    monkeypatch.setattr(vit_module, "explicit_attention", forbidden)
    net = VisionTransformer(**SMALL).train()
    net(torch.rand(2, 3, 32, 32)).sum().backward()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"img_size": 30, "patch_size": 4}, "img_size=30 is not divisible by patch_size=4"),
        ({"embed_dim": 30, "num_heads": 4}, "embed_dim=30 is not divisible by num_heads=4"),
        ({"pos_embed": "rotary"}, "pos_embed must be"),
    ],
)
def test_bad_shapes_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VisionTransformer(**{**SMALL, **kwargs})


def test_vit_fast_dev_run_through_the_real_configs(compose_train) -> None:
    cfg = compose_train(
        "experiment=vit_cifar",
        "model=vit",
        "model.net.embed_dim=32",
        "model.net.depth=2",
        "trainer.fast_dev_run=true",
    )
    # the ViT recipe (an experiment) reaches the data, trainer and callbacks groups
    assert cfg.data.randaugment_ops == 2
    assert cfg.trainer.gradient_clip_val == 1.0
    assert cfg.callbacks.early_stopping.patience == 40
    summary = train(cfg)
    assert summary["status"] == "completed"
    assert summary["model"] == "vit"
    assert summary["params"] < 200_000
