"""cvexp-predict and the image-file reader: formats, bit depths, orientation, bad files, outputs."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from cvexp.checkpoint import load_classifier
from cvexp.data.formats import CLASSES
from cvexp.data.image_files import (
    UnreadableImage,
    find_images,
    read_image,
    read_image_with_size,
    read_images,
)
from cvexp.predict import predict
from cvexp.errors import UserError
from cvexp.runtime.hydra_app import compose_config
from tests.conftest import assert_one_clear_error, run_cli
from tests.tiny_checkpoint import write_tiny_checkpoint

# every readable image in the folder below, and the one corrupt file
READABLE = [
    "big.png",
    "gray.png",
    "gray16.png",
    "photo.jpg",
    "plain.png",
    "rotated.png",
    "sub/deeper/palette.gif",
    "sub/nested.jpg",
    "transparent.png",
    "wide.webp",
]
CORRUPT = ["broken.png", "truncated.jpg"]


def write_image_folder(root: Path) -> Path:
    """A folder of images in many formats and modes, a corrupt and a truncated file, a subfolder,
    and files that are not images (ignored)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub" / "deeper").mkdir(parents=True)

    def rgb(h: int, w: int) -> np.ndarray:
        return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)

    Image.fromarray(rgb(32, 32)).save(root / "plain.png")
    Image.fromarray(rgb(40, 50)).save(root / "photo.jpg", quality=90)
    Image.fromarray(rgb(60, 100)).save(root / "big.png")  # 100 wide, 60 high
    Image.fromarray(rgb(32, 32)).save(root / "sub" / "nested.jpg")
    Image.fromarray(rgb(30, 20)).convert("P").save(root / "sub" / "deeper" / "palette.gif")
    Image.fromarray(rgb(24, 48)).save(root / "wide.webp")
    rgba = np.dstack([rgb(32, 32), np.zeros((32, 32), np.uint8)])  # fully transparent
    rgba[:16, :, 3] = 255  # top half opaque
    Image.fromarray(rgba, "RGBA").save(root / "transparent.png")
    Image.fromarray(rng.integers(0, 256, size=(32, 32), dtype=np.uint8)).save(root / "gray.png")
    # a 16-bit vertical gradient, 0 at the top to 65535 at the bottom
    gradient = np.repeat(np.linspace(0, 65535, 64), 48).reshape(64, 48).astype(np.uint16)
    Image.fromarray(gradient).save(root / "gray16.png")
    # stored 40 wide x 20 high, red left and blue right; EXIF orientation 6 shows it rotated
    # 90 degrees clockwise: 20 wide x 40 high, red on top
    rotated = Image.new("RGB", (40, 20), (255, 0, 0))
    rotated.paste((0, 0, 255), (20, 0, 40, 20))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(root / "rotated.png", exif=exif)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a PNG at all")
    buffer = io.BytesIO()
    Image.fromarray(rgb(64, 64)).save(buffer, format="JPEG")
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[:400])
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"macOS metadata")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "vit.ckpt", "vit")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def compose_predict(tmp_path: Path):
    """Compose the real predict config (run dir under tmp_path), as the console script would."""

    def _compose(*overrides: str):
        return compose_config("predict", list(overrides), tmp_path / "run")

    yield _compose
    GlobalHydra.instance().clear()


# ---------------------------------------------------------------- reading image files


def test_find_images_is_recursive_sorted_and_skips_other_files(images: Path) -> None:
    found = [p.relative_to(images).as_posix() for p in find_images(images)]
    assert found == sorted(READABLE + CORRUPT)
    assert find_images(images / "plain.png") == [images / "plain.png"]
    with pytest.raises(UserError, match="not found"):
        find_images(images / "missing")


def test_read_image_gives_32x32_rgb_in_unit_range(images: Path) -> None:
    for name in READABLE:
        tensor = read_image(images / name)
        assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32, name
        assert tensor.min() >= 0 and tensor.max() <= 1, name
    gray = read_image(images / "gray.png")
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    plain = read_image(images / "plain.png")
    expected = torch.from_numpy(np.array(Image.open(images / "plain.png"))).permute(2, 0, 1)
    assert torch.equal(plain, expected.float() / 255)  # 32x32 already: no resize, exact


def test_sixteen_bit_png_is_scaled_not_clipped(images: Path) -> None:
    tensor = read_image(images / "gray16.png")
    middle = tensor[:, 8:24]
    assert middle.min() > 0 and middle.max() < 1  # a clip at 255 would make it all 1.0
    column = tensor[0, :, 16]
    assert torch.all(column[1:] >= column[:-1] - 1e-6)  # still a gradient, top to bottom
    assert column[0] < 0.05 and column[-1] > 0.95
    assert abs(tensor[0, 15:17].mean().item() - 0.5) < 0.05


def test_exif_orientation_and_transparency(images: Path) -> None:
    full, size = read_image_with_size(images / "rotated.png", None)
    assert size == (20, 40) and full.shape == (3, 40, 20)
    assert full[:, 0, 0].tolist() == [1, 0, 0] and full[:, -1, 0].tolist() == [0, 0, 1]
    transparent = read_image(images / "transparent.png")
    assert torch.all(transparent[:, 20:] == 1)  # transparent pixels over white


def test_corrupt_and_huge_files_are_unreadable_not_fatal(images: Path, monkeypatch) -> None:
    for name in CORRUPT:
        with pytest.raises(UnreadableImage, match="not a readable image"):
            read_image(images / name)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # big.png is 6000 pixels: a "bomb"
    with pytest.raises(UnreadableImage, match="refuses images this large"):
        read_image(images / "big.png")
    batch = read_images([images / "plain.png", images / "big.png", images / "broken.png"])
    assert batch.files == [images / "plain.png"] and batch.images.shape == (1, 3, 32, 32)
    assert [e.path.name for e in batch.skipped] == ["big.png", "broken.png"]


# ---------------------------------------------------------------- the command


def read_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.mark.slow
def test_predict_cli_on_a_folder(tmp_path: Path, images: Path, checkpoint: Path) -> None:
    result = run_cli(
        "cvexp-predict", f"ckpt_path={checkpoint}", f"inputs={images}", "out=preds", cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    out = tmp_path / "preds"
    header, rows = read_rows(out / "predictions.csv")
    assert header == ["file", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
    assert sorted(r["file"] for r in rows) == sorted(READABLE)
    for row in rows:
        probs = [float(row[f"prob_{k}"]) for k in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        assert all(row[f"class_{k}"] in CLASSES for k in (1, 2, 3))
    for name in CORRUPT:
        assert f"skipped {name}" in output
    assert f"skipped {len(CORRUPT)} unreadable" in output
    assert "resized to 32x32" in output
    assert f"classified {len(READABLE)} images" in output
    assert (out / "predictions.png").stat().st_size > 0
    _, skipped = read_rows(out / "skipped.csv")
    assert sorted(r["file"] for r in skipped) == CORRUPT

    # the same numbers as the classifier itself on the same tensors
    classifier, _ = load_classifier(checkpoint)
    batch = torch.stack([read_image(images / r["file"]) for r in rows])
    with torch.no_grad():
        expected = classifier(batch).softmax(dim=1)
    for row, probabilities in zip(rows, expected, strict=True):
        top = probabilities.topk(3)
        for k in range(3):
            named = probabilities[CLASSES.index(row[f"class_{k + 1}"])]
            assert float(row[f"prob_{k + 1}"]) == pytest.approx(named.item(), abs=1e-5)
            assert float(row[f"prob_{k + 1}"]) == pytest.approx(top.values[k].item(), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "fragment"),
    [("top_k=0", "top_k=0 is not valid"), ("inputs=missing_folder", "Input not found")],
)
def test_predict_cli_bad_input_exits_2(
    tmp_path: Path, images: Path, checkpoint: Path, override: str, fragment: str
) -> None:
    result = run_cli(
        "cvexp-predict", f"ckpt_path={checkpoint}", f"inputs={images}", override, cwd=tmp_path
    )
    assert result.returncode == 2
    assert_one_clear_error(result, fragment)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_predict_function_options_and_refusals(
    tmp_path: Path, images: Path, checkpoint: Path, compose_predict
) -> None:
    base = [f"ckpt_path={checkpoint}"]
    out = tmp_path / "single"
    done = predict(
        compose_predict(
            *base, f"inputs={images / 'photo.jpg'}", "top_k=10", "grid_size=0", f"out={out}"
        )
    )
    assert done["grid_png"] is None and not (out / "predictions.png").exists()
    header, rows = read_rows(done["predictions_csv"])
    assert [r["file"] for r in rows] == ["photo.jpg"] and len(header) == 1 + 2 * 10
    assert sum(float(rows[0][f"prob_{k}"]) for k in range(1, 11)) == pytest.approx(1, abs=1e-4)
    before = (out / "predictions.csv").read_bytes()
    with pytest.raises(UserError, match=r"never overwrites.*out=.*single-1"):
        predict(compose_predict(*base, f"inputs={images}", f"out={out}"))
    assert (out / "predictions.csv").read_bytes() == before

    # the run's own directory when out= is not given; a small grid; tiny batches
    done = predict(compose_predict(*base, f"inputs={images}", "grid_size=2", "batch_size=3"))
    assert done["out_dir"] == tmp_path / "run" and done["classified"] == len(READABLE)
    assert (tmp_path / "run" / "predictions.png").is_file()

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    (tmp_path / "corrupt").mkdir()
    for name in CORRUPT:
        (tmp_path / "corrupt" / name).write_bytes((images / name).read_bytes())
    for overrides, fragment in [
        ([f"inputs={tmp_path / 'empty'}"], "No image files under"),
        ([f"inputs={images / 'broken.png'}"], "is not a readable image"),
        ([f"inputs={tmp_path / 'corrupt'}"], "None of the 2 files under .* could be read"),
        ([f"inputs={images}", "top_k=11"], "pass top_k between 1 and 10"),
        ([f"inputs={images}", "batch_size=0"], "batch_size=0 is not valid"),
        ([f"inputs={images}", "device=tpu"], "device=tpu is not a device"),
        ([f"inputs={images}", "device=cuda:99"], "device=cuda:99"),
    ]:
        with pytest.raises(UserError, match=fragment):
            predict(compose_predict(*base, *overrides, f"out={tmp_path / 'unused'}"))
    assert not (tmp_path / "unused" / "predictions.csv").exists()
