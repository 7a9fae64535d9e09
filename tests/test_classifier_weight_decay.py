"""cvexp/classifier.py's optimiser groups: timm's weight-decay rule for every conf/model/*.yaml,
composed through the real config (biases, norms, class tokens and position embeddings never
decay; conv and linear weights always take the optimiser's weight_decay)."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

import cvexp.classifier
from cvexp.classifier import build_classifier
from cvexp.errors import user_error_message
from cvexp.models.resnet_sasa import LocalSelfAttention2d, ResNet
from cvexp.models.vgg import VGG
from cvexp.models.vit import VisionTransformer
from cvexp.training import train
from tests.test_timm_vit import unreachable_hub  # noqa: F401  (autouse: no download is tried)

MODELS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "model").glob("*.yaml"))
CASES = [*((m, ()) for m in MODELS), ("vit", ("model.net.pos_embed=learned",))]


def embeddings(net: nn.Module) -> set[str]:
    """The parameters that are embeddings, found here without the net's own no_weight_decay()."""
    names = {name for name, _ in net.named_parameters()}
    wanted = {"cls_token", "pos_embed", "model.cls_token", "model.pos_embed"} & names
    for prefix, module in net.named_modules():
        if isinstance(module, LocalSelfAttention2d):  # relative position embeddings
            wanted |= {f"{prefix}.rel_rows", f"{prefix}.rel_cols"}
    return wanted


@pytest.mark.parametrize(("model", "overrides"), CASES, ids=[" ".join((m, *o)) for m, o in CASES])
def test_every_model_decays_weights_only(compose_train, model: str, overrides: tuple) -> None:
    cfg = compose_train(f"model={model}", *overrides, tiny_model=False)
    if "pretrained" in cfg.model.net:  # a timm model: random init, nothing downloaded
        cfg = compose_train(
            f"model={model}", *overrides, "model.net.pretrained=false", tiny_model=False
        )
    classifier = build_classifier(cfg.model)
    net = classifier.net
    groups = classifier.parameter_groups()
    # the no-decay groups set weight_decay=0; the others take the optimiser's own
    excluded = {id(p) for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]}
    optimizer = classifier.optimizer_factory(params=groups)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    trainable = {name: p for name, p in net.named_parameters() if p.requires_grad}
    assert len(decay_of) == sum(len(g["params"]) for g in optimizer.param_groups)  # each once
    assert set(decay_of) == {id(p) for p in trainable.values()}  # frozen ones left out
    no_decay = {name for name, p in trainable.items() if id(p) in excluded}
    assert all(decay_of[id(trainable[name])] == 0.0 for name in no_decay)

    one_d = {name for name, p in trainable.items() if p.ndim <= 1 or name.endswith(".bias")}
    assert one_d <= no_decay  # biases, BatchNorm and LayerNorm
    assert no_decay - one_d == embeddings(net) & trainable.keys()
    if model == "vit":
        learned = "model.net.pos_embed=learned" in overrides
        assert "cls_token" in no_decay and ("pos_embed" in no_decay) == learned
    if model.startswith("timm_vit") and model != "timm_vit_linear_probe":  # its backbone is frozen
        assert {"model.cls_token", "model.pos_embed"} <= no_decay
    if "sasa" in model:
        assert any(name.endswith(".rel_rows") for name in no_decay)
    for name, module in net.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.requires_grad:
            assert f"{name}.weight" not in no_decay, name
            # model.optimizer.weight_decay is the single knob for what decays
            assert decay_of[id(module.weight)] == cfg.model.optimizer.weight_decay, name


def test_the_no_decay_names_are_the_nets_own() -> None:
    """Each net lists its embeddings in no_weight_decay(), by their names in named_parameters()."""
    small = {"embed_dim": 16, "depth": 1, "num_heads": 2}
    assert VisionTransformer(**small).no_weight_decay() == {"cls_token"}
    assert VisionTransformer(**small, pos_embed="learned").no_weight_decay() == {
        "cls_token",
        "pos_embed",
    }
    assert VGG(depth=11, width=0.125, head_width=8).no_weight_decay() == set()
    sizes = {"blocks": (1, 1), "widths": (4, 4), "stem_width": 8, "num_heads": 2}
    assert ResNet(**sizes, attention_stages=(False, False)).no_weight_decay() == set()
    sasa = ResNet(**sizes, attention_stages=(False, True), attention_stem=True)
    names = {name for name, _ in sasa.named_parameters()}
    assert sasa.no_weight_decay() == {n for n in names if n.endswith((".rel_rows", ".rel_cols"))}
    assert len(sasa.no_weight_decay()) == 4  # the stem's layer and stage 2's


def test_a_net_without_weight_decay_keeps_its_groups_empty_of_it(compose_train) -> None:
    """An optimiser with no weight decay (the linear probe's 0.0) decays nothing."""
    cfg = compose_train("model.optimizer.weight_decay=0.0")
    classifier = build_classifier(cfg.model)
    optimizer = classifier.optimizer_factory(params=classifier.parameter_groups())
    assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(
        list(classifier.net.parameters())
    )


def former_rule(net: nn.Module) -> list[dict]:
    """The groups before timm's rule: every tensor of more than one dimension decayed."""
    trainable = [p for p in net.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim > 1]},
        {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]


def test_a_vit_run_started_under_the_former_rule_is_refused_on_resume(
    compose_train, monkeypatch
) -> None:
    small_vit = [
        "model=vit",
        "model.net.embed_dim=16",
        "model.net.depth=1",
        "model.net.num_heads=2",
        "callbacks.feature_maps=null",
    ]
    with monkeypatch.context() as patch:
        patch.setattr(cvexp.classifier, "weight_decay_groups", former_rule)
        first = train(compose_train(*small_vit, "trainer.max_epochs=1", tiny_model=False))
    last = Path(first["best_model_path"]).parent / "last.ckpt"
    with pytest.raises(Exception) as info:
        train(compose_train(*small_vit, f"ckpt_path={last}", tiny_model=False))
    message = user_error_message(info.value) or ""
    assert f"start a new run from its weights with init_from={last}." in message
    assert "this run's [" in message and message.count(". ") == 0
