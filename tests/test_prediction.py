"""cvexp-predict and the image-file reader: formats, bit depths, orientation, bad files, outputs."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
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
from cvexp.errors import UserError
from cvexp.prediction import (
    check_output_folder,
    predict,
    save_prediction_grid,
    write_predictions_csv,
    write_skipped_csv,
)
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


def test_predict_returns_a_table_that_the_writers_write(
    tmp_path: Path, images: Path, checkpoint: Path
) -> None:
    table = predict(checkpoint, images / "photo.jpg", top_k=10)
    assert [r.file for r in table.rows] == ["photo.jpg"] and table.skipped == []
    assert table.top_k == 10 and len(table.rows[0].classes) == 10
    assert sum(table.rows[0].probabilities) == pytest.approx(1, abs=1e-4)
    assert table.resized == 1  # photo.jpg is 50x40
    assert table.probabilities.shape == (1, 10)
    csv_path = write_predictions_csv(table, tmp_path / "single" / "predictions.csv")
    header, rows = read_rows(csv_path)
    assert [r["file"] for r in rows] == ["photo.jpg"] and len(header) == 1 + 2 * 10
    assert rows[0]["class_1"] == table.rows[0].classes[0]
    assert float(rows[0]["prob_1"]) == pytest.approx(table.rows[0].probabilities[0], abs=1e-6)
    with pytest.raises(UserError, match=r"never overwrites.*out=.*single-1"):
        check_output_folder(tmp_path / "single")

    # a folder: every readable image a row, in file order; the corrupt ones skipped, with why
    table = predict(checkpoint, images, batch_size=3)
    assert [r.file for r in table.rows] == READABLE
    assert [s.file for s in table.skipped] == CORRUPT
    assert all(s.reason for s in table.skipped)
    grid = save_prediction_grid(table, tmp_path / "grid.png", count=2, title="two")
    assert grid is not None and grid.stat().st_size > 0
    assert save_prediction_grid(table, tmp_path / "none.png", count=0, title="") is None
    assert not (tmp_path / "none.png").exists()
    _, skipped = read_rows(write_skipped_csv(table, tmp_path / "skipped.csv"))
    assert [r["file"] for r in skipped] == CORRUPT


def test_predict_refusals(tmp_path: Path, images: Path, checkpoint: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    (tmp_path / "corrupt").mkdir()
    for name in CORRUPT:
        (tmp_path / "corrupt" / name).write_bytes((images / name).read_bytes())
    for inputs, options, fragment in [
        (tmp_path / "empty", {}, "No image files under"),
        (images / "broken.png", {}, "is not a readable image"),
        (tmp_path / "corrupt", {}, "None of the 2 files under .* could be read"),
        (images, {"top_k": 11}, "pass top_k between 1 and 10"),
        (images, {"top_k": 0}, "top_k=0 is not valid"),
        (images, {"batch_size": 0}, "batch_size=0 is not valid"),
        (images, {"device": "tpu"}, "device=tpu is not a device"),
        (images, {"device": "cuda:99"}, "device=cuda:99"),
    ]:
        with pytest.raises(UserError, match=fragment):
            predict(checkpoint, inputs, **options)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "a_file")


def test_a_broken_link_is_skipped_with_its_reason(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 120, 40)).save(folder / "cat.png")
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")  # its target does not exist
    assert find_images(folder) == [folder / "cat.png", folder / "gone.png"]
    table = predict(checkpoint, folder)
    assert [r.file for r in table.rows] == ["cat.png"]
    (skipped,) = table.skipped
    assert skipped.file == "gone.png"
    assert "broken symbolic link" in skipped.reason and "deleted.png" in skipped.reason
    _, rows = read_rows(write_skipped_csv(table, tmp_path / "skipped.csv"))
    assert rows == [{"file": "gone.png", "reason": skipped.reason}]


@pytest.mark.slow
def test_predict_cli_lists_a_broken_link_in_skipped_csv(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 120, 40)).save(folder / "cat.png")
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")
    result = run_cli(
        "cvexp-predict", f"ckpt_path={checkpoint}", f"inputs={folder}", "out=preds", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped gone.png: a broken symbolic link" in result.stdout
    _, predicted = read_rows(tmp_path / "preds" / "predictions.csv")
    _, skipped = read_rows(tmp_path / "preds" / "skipped.csv")
    assert [r["file"] for r in predicted] == ["cat.png"]
    assert [r["file"] for r in skipped] == ["gone.png"]
    assert "broken symbolic link" in skipped[0]["reason"]
