"""cvexp-export: torch.export, TorchScript and ONNX models that take [0, 1] images, checked
against PyTorch."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

import cvexp.checkpoint_export as export_module
from cvexp.checkpoint import load_classifier
from cvexp.checkpoint_export import export_checkpoint
from cvexp.errors import UserError
from cvexp.export_formats import export_torch_export, load_torchscript, require
from cvexp.runtime.config import compose_config
from tests.conftest import run_cli
from tests.tiny_checkpoint import write_tiny_checkpoint

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpt")
    return {
        kind: write_tiny_checkpoint(folder / f"{kind}.ckpt", kind)
        for kind in ("vit", "resnet", "vgg16", "resnet_sasa")
    }


@pytest.fixture
def compose_export(tmp_path: Path):
    """Compose the real export config (run dir under tmp_path; no CIFAR-10 unless given)."""

    def _compose(*overrides: str, run_dir: Path | None = None):
        return compose_config(
            "export",
            [f"data.root={tmp_path / 'no_data'}", *overrides],
            run_dir or tmp_path / "run",
        )

    yield _compose
    GlobalHydra.instance().clear()


def images(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def reference_logits(checkpoint: Path, batch: torch.Tensor) -> torch.Tensor:
    classifier, _ = load_classifier(checkpoint)
    with torch.no_grad():
        return classifier(batch)


def assert_predicts_as_checkpoint(model, checkpoint: Path, batches) -> None:
    """An exported model gives the checkpoint's logits (to 1e-4) and classes on every batch."""
    for batch in batches:
        with torch.no_grad():
            got = model(batch)
        expected = reference_logits(checkpoint, batch)
        assert got.shape == (len(batch), 10)
        assert (got - expected).abs().max() <= 1e-4
        assert torch.equal(got.argmax(1), expected.argmax(1))


# the scratch ViT (fused attention), VGG16, and the ResNet with local attention in every layer
@pytest.mark.parametrize("kind", ["vit", "vgg16", "resnet_sasa"])
def test_torch_export_matches_pytorch_with_a_dynamic_batch(
    kind: str, tmp_path: Path, checkpoints, compose_export
) -> None:
    cfg = compose_export(f"ckpt_path={checkpoints[kind]}", "format=torch_export")
    record = export_checkpoint(cfg)
    path = tmp_path / "run" / "model.pt2"  # the default name, in the run directory
    assert record["passed"] and Path(record["file"]) == path.resolve()
    assert record["format"] == "torch_export" and record["torch"] == torch.__version__
    assert record["parity"]["max_abs_diff"] <= 1e-4 and record["parity"]["top1_all_agree"]
    assert record["parity"]["images"] == 9  # a batch of 8 and a batch of 1
    assert json.loads((tmp_path / "run" / "export.json").read_text()) == record

    program = torch.export.load(str(path))  # the plain PyTorch way, as a user would
    (name,) = program.graph_signature.user_inputs
    node = next(n for n in program.graph.nodes if n.name == name)
    assert isinstance(node.meta["val"].shape[0], torch.SymInt)  # the batch: not a constant
    # exported with 2 images: other batch sizes prove the dynamic batch
    assert_predicts_as_checkpoint(
        program.module(), checkpoints[kind], (images(1, seed=2), images(5), images(3, seed=3))
    )


def test_torch_export_refuses_a_net_it_cannot_trace(tmp_path: Path) -> None:
    class BatchDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # specialises the batch size
            return x.flatten(1)[:, :10] * (2.0 if x.shape[0] == 2 else 1.0)

    with pytest.raises(UserError, match=r"torch\.export could not export.*format=onnx"):
        export_torch_export(BatchDependent().eval(), tmp_path / "m.pt2", images(2))
    assert list(tmp_path.iterdir()) == []  # nothing left behind


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_torchscript_export_matches_pytorch(
    kind: str, tmp_path: Path, checkpoints, compose_export, data_root: Path
) -> None:
    cfg = compose_export(
        f"ckpt_path={checkpoints[kind]}", "format=torchscript", f"data.root={data_root}"
    )
    record = export_checkpoint(cfg)
    path = tmp_path / "run" / "model.pt"
    assert record["passed"] and Path(record["file"]) == path.resolve()
    assert record["parity"]["max_abs_diff"] <= 1e-4 and record["parity"]["top1_all_agree"]
    assert record["parity"]["sources"] == ["9 random", "8 CIFAR-10 test"]  # tiny data in data_root
    assert json.loads((tmp_path / "run" / "export.json").read_text()) == record

    loaded = torch.jit.load(str(path))  # the plain PyTorch way, as a user would
    # a dynamic batch: traced with 2 images
    assert_predicts_as_checkpoint(loaded, checkpoints[kind], (images(5), images(1, seed=2)))


@pytest.mark.skipif(
    not HAS_ONNX, reason="onnx and onnxruntime not installed (pip install 'cvexp[export]')"
)
@pytest.mark.parametrize(("kind", "exporter"), [("vit", "auto"), ("resnet", "legacy")])
def test_onnx_export_matches_pytorch(
    kind: str, exporter: str, tmp_path: Path, checkpoints, compose_export
) -> None:
    import onnxruntime

    out = tmp_path / "deploy" / "net.onnx"
    cfg = compose_export(
        f"ckpt_path={checkpoints[kind]}", "format=onnx", f"out={out}", f"onnx.exporter={exporter}"
    )
    record = export_checkpoint(cfg)
    assert record["passed"] and record["parity"]["max_abs_diff"] <= 1e-3
    assert record["parity"]["sources"] == ["9 random"]  # no CIFAR-10 at data.root
    if exporter == "legacy" or importlib.util.find_spec("onnxscript") is None:
        assert record["exporter"] == "legacy"
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    for batch in (images(7), images(1, seed=2)):
        got = torch.from_numpy(session.run(None, {"images": batch.numpy()})[0])
        expected = reference_logits(checkpoints[kind], batch)
        assert got.shape == (len(batch), 10)
        assert (got - expected).abs().max() <= 1e-3
        assert torch.equal(got.argmax(1), expected.argmax(1))


def test_export_never_overwrites(tmp_path: Path, checkpoints, compose_export) -> None:
    out = tmp_path / "deploy" / "model.pt"
    ckpt = f"ckpt_path={checkpoints['resnet']}"
    export_checkpoint(compose_export(ckpt, "format=torchscript", f"out={out}"))
    before = out.read_bytes()
    with pytest.raises(UserError, match=r"never overwrites.*out=.*model-1\.pt"):
        export_checkpoint(
            compose_export(ckpt, "format=torchscript", f"out={out}", run_dir=tmp_path / "run2")
        )
    assert out.read_bytes() == before
    # a folder as out= gets model.pt inside it: the same file, refused too
    with pytest.raises(UserError, match="never overwrites"):
        export_checkpoint(
            compose_export(ckpt, "format=torchscript", f"out={out.parent}", run_dir=tmp_path / "r3")
        )
    # and a run directory that already has an export.json is not written into again
    with pytest.raises(UserError, match=r"export\.json already exists"):
        export_checkpoint(
            compose_export(ckpt, "format=torchscript", f"out={tmp_path / 'other.pt'}")
        )


def test_an_existing_file_of_another_kind_gets_a_model_name_suggested(
    tmp_path: Path, checkpoints, compose_export
) -> None:
    # out= names a file that exists, and is no model: the run's summary.json, say
    run = tmp_path / "a_run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    ckpt = f"ckpt_path={checkpoints['resnet']}"
    with pytest.raises(UserError, match="never overwrites") as refused:
        export_checkpoint(compose_export(ckpt, "format=torchscript", f"out={run / 'summary.json'}"))
    assert f"out={run / 'model.pt'} " in str(refused.value)
    assert "summary-1" not in str(refused.value)
    # a model file of the format's own suffix gets the next free name of its own
    (run / "cifar.onnx").write_bytes(b"an earlier export")
    (run / "cifar-1.onnx").write_bytes(b"another")
    with pytest.raises(UserError, match="never overwrites") as refused:
        export_checkpoint(compose_export(ckpt, "format=onnx", f"out={run / 'cifar.onnx'}"))
    assert f"out={run / 'cifar-2.onnx'} " in str(refused.value)
    assert (run / "summary.json").read_text() == "{}"


def test_export_fails_clearly_when_parity_fails(
    tmp_path: Path, checkpoints, compose_export, monkeypatch
) -> None:
    def drifting(path: Path):
        run = load_torchscript(path)
        return lambda batch: run(batch) + 0.01  # an exporter bug, as far as parity can tell

    monkeypatch.setitem(export_module.LOADERS, "torchscript", drifting)
    cfg = compose_export(f"ckpt_path={checkpoints['resnet']}", "format=torchscript")
    with pytest.raises(UserError, match=r"differ from PyTorch's by up to 0\.01.*tolerance 0\.0001"):
        export_checkpoint(cfg)
    run_dir = tmp_path / "run"
    assert not (run_dir / "model.pt").exists()
    assert (run_dir / "model.parity-failed.pt").is_file()
    record = json.loads((run_dir / "export.json").read_text())
    assert record["passed"] is False and record["parity"]["max_abs_diff"] == pytest.approx(0.01)


def test_export_bad_options(checkpoints, compose_export) -> None:
    ckpt = f"ckpt_path={checkpoints['resnet']}"
    for overrides, fragment in [
        ([ckpt, "format=tensorflow"], "format=tensorflow is not an export format"),
        ([ckpt], "needs a format"),
        ([ckpt, "format=torchscript", "tolerance=-1"], "tolerance=-1 is not valid"),
        ([ckpt, "format=torchscript", "parity_images=0"], "parity_images=0 is not valid"),
        (["ckpt_path=missing.ckpt", "format=torchscript"], "Checkpoint not found"),
    ]:
        with pytest.raises(UserError, match=fragment):
            export_checkpoint(compose_export(*overrides))
    with pytest.raises(UserError, match=r'pip install -e "\.\[export\]"'):
        require("no_such_module_for_cvexp", "ONNX export")


@pytest.mark.slow
def test_export_cli(tmp_path: Path, checkpoints) -> None:
    result = run_cli(
        "cvexp-export",
        f"ckpt_path={checkpoints['vit']}",
        "format=torchscript",
        "out=model.pt",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "wrote model.pt" in result.stdout and "max |logit difference|" in result.stdout
    assert (tmp_path / "model.pt").is_file()
    (export_json,) = (tmp_path / "outputs" / "export").glob("*/*/export.json")
    assert json.loads(export_json.read_text())["passed"] is True


@pytest.mark.slow
def test_export_cli_torch_export(tmp_path: Path, checkpoints) -> None:
    result = run_cli(
        "cvexp-export", f"ckpt_path={checkpoints['vgg16']}", "format=torch_export", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    (export_json,) = (tmp_path / "outputs" / "export").glob("*/*/export.json")
    record = json.loads(export_json.read_text())
    path = export_json.parent / "model.pt2"
    assert f"wrote {path} (" in result.stdout and "torch.export" in result.stdout
    assert record["passed"] is True and record["format"] == "torch_export"
    assert Path(record["file"]) == path.resolve() and path.is_file()
    assert record["parity"]["max_abs_diff"] <= 1e-4 and record["parity"]["images"] == 9
    assert record["input"]["shape"] == ["batch", 3, 32, 32]
