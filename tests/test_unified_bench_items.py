"""Unified-Bench on the release's image folder (issue 17 item 6) and upright MMT-Bench TSV images."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_config import PAPER_PATHS
from workflow_scripts.config.loader import parse, resolve
from workflow_scripts.config.typed import ConfigError
from workflow_scripts.eval import items, mmt

RED, BLUE = (220, 20, 20), (20, 20, 220)
ORIENTATION = 0x0112  # EXIF tag
ROTATE_CW_TO_DISPLAY = 6  # the camera stored the picture turned 90° counter-clockwise


def _upright() -> Image.Image:
    """40 x 20: left half red, right half blue."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20], pixels[:, 20:] = RED, BLUE
    return Image.fromarray(pixels)


def _rotated_jpeg() -> bytes:
    """The upright picture stored as a phone does: pixels turned, EXIF saying how to turn them back."""
    stored = _upright().transpose(Image.Transpose.ROTATE_90)  # counter-clockwise: 20 x 40, red at the bottom
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATE_CW_TO_DISPLAY
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def _assert_upright(image: Image.Image) -> None:
    assert image.size == (40, 20)
    pixels = np.asarray(image.convert("RGB"), dtype=int)
    assert np.abs(pixels[10, 5] - RED).max() < 12 and np.abs(pixels[10, 34] - BLUE).max() < 12


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "UniBench" / "Image"
    folder.mkdir(parents=True)
    (folder / "b_photo.jpg").write_bytes(_rotated_jpeg())
    _upright().save(folder / "a_drawing.png")
    (folder / ".DS_Store").write_bytes(b"\0\1")  # hidden files are the file manager's, not the benchmark's
    return folder


def test_folder_items_are_keyed_by_file_name_sorted_and_upright(tmp_path):
    folder = _folder(tmp_path)
    cfg = parse(resolve({"eval": {"unified_bench": {"folder": str(folder)}}}))
    assert items.build("unified_bench", cfg.eval, 0, tmp_path / "no-shards", tmp_path / "set") == 2
    built = items.read(tmp_path / "set")
    assert [i["item_id"] for i in built] == ["a_drawing.png", "b_photo.jpg"]
    assert [i["image_id"] for i in built] == ["a_drawing.png", "b_photo.jpg"]
    for item in built:
        stored = tmp_path / "set" / "images" / item["image"]
        assert stored.suffix == ".png"  # a lossless copy: the JPEG is not re-encoded
        _assert_upright(Image.open(stored))
    # the seed is the file name's, so it does not move when another image joins the folder
    (folder / "0_first.png").write_bytes((folder / "a_drawing.png").read_bytes())
    items.build("unified_bench", cfg.eval, 0, tmp_path / "no-shards", tmp_path / "set2")
    again = {i["item_id"]: i["seed"] for i in items.read(tmp_path / "set2")}
    assert all(again[i["item_id"]] == i["seed"] for i in built)
    assert json.loads((tmp_path / "set" / "protocol.json").read_text()) == {
        "benchmark_protocol": "official image folder",
        "deviations": ["2 images in the folder (the release scores 100)"],
    }


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", b"reference list", r"notes\.txt is not an image"),
        ("broken.png", b"\x89PNG\r\n\x1a\n not really", r"broken\.png cannot be read"),
    ],
)
def test_a_stray_or_corrupt_file_stops_the_build_naming_it(tmp_path, name, content, message):
    folder = _folder(tmp_path)
    (folder / name).write_bytes(content)
    cfg = parse(resolve({"eval": {"unified_bench": {"folder": str(folder)}}}))
    with pytest.raises(ValueError, match=rf"eval\.unified_bench\.folder: .*{message}"):
        items.build("unified_bench", cfg.eval, 0, tmp_path / "no-shards", tmp_path / "set")
    assert not (tmp_path / "set").exists()


def test_paper_without_the_folder_stops_naming_the_key_and_the_fix():
    user = {"preset": "paper", **PAPER_PATHS, "eval": {}}
    with pytest.raises(ConfigError) as err:
        resolve(user)
    message = str(err.value)
    assert "eval.unified_bench.folder" in message and "own_split: true" in message
    assert "not the official image set" in message
    # the documented way out: score the own bench split, which the records then say is not official
    cfg = parse(resolve({**user, "eval": {"unified_bench": {"own_split": True}}}))
    assert cfg.eval.unified_bench.folder is None
    assert parse(resolve({"preset": "paper", **PAPER_PATHS})).eval.unified_bench.folder


def test_own_split_records_say_not_the_official_image_set(tmp_path):
    cfg = parse(resolve({}))  # tiny: its own bench split
    assert cfg.eval.unified_bench.own_split and cfg.eval.unified_bench.folder is None
    protocol = items.unified_bench_protocol(cfg.eval, 4)
    items.write(tmp_path / "set", [], {}, protocol)
    record = items.score_protocol(tmp_path / "set")
    assert record == {
        "benchmark_protocol": "own bench split",
        "detector": None,
        "judge": None,
        "deviations": ["not the official image set (the data build's bench split)"],
    }
    folder_cfg = parse(resolve({"preset": "paper", **PAPER_PATHS}))
    assert items.unified_bench_protocol(folder_cfg.eval, 100)["deviations"] == []


def _tsv(tmp_path: Path, image: bytes) -> Path:
    row = {
        "index": "7",
        "image": base64.b64encode(image).decode(),
        "question": "Which colour is on the left?",
        "A": "red",
        "B": "blue",
        "answer": "A",
        "category": "color_recognition",
    }
    path = tmp_path / "mmt.tsv"
    path.write_text("\t".join(row) + "\n" + "\t".join(row.values()) + "\n")
    return path


def test_mmt_tsv_images_are_read_upright(tmp_path):
    (probe,) = mmt.read_tsv(str(_tsv(tmp_path, _rotated_jpeg())), {"color": "color_recognition"})
    assert probe["item_id"] == "color-7" and probe["options"] == ["red", "blue"]
    _assert_upright(probe["image"])


def test_mmt_tsv_with_an_unreadable_image_names_the_row(tmp_path):
    path = _tsv(tmp_path, b"not an image")
    with pytest.raises(ValueError, match=r"eval\.mmt\.tsv: .*row index 7 cannot be read"):
        mmt.read_tsv(str(path), {"color": "color_recognition"})
