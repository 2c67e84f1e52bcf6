"""Data build: bad inputs become logged reasons, never crashes; splits are disjoint; shards read back."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from workflow_scripts.config.loader import parse, resolve
from workflow_scripts.data import build as data_build
from workflow_scripts.data.shards import ShardDataset

REPO = Path(__file__).resolve().parent.parent


def _png(seed: int, size=(160, 140)) -> bytes:
    rng = np.random.default_rng(seed)
    # blocky random images: distinct perceptual hashes, unlike pure noise at this size
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def user_folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    words = "a picture of colourful blocks on a grid"
    for i in range(8):
        (root / f"good{i}.png").write_bytes(_png(i))
        (root / f"good{i}.txt").write_text(f"{words} number {i}")
    (root / "copy_of_good0.png").write_bytes(_png(0))  # byte-identical twin
    (root / "copy_of_good0.txt").write_text(f"{words} again")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all")
    (root / "corrupt.txt").write_text(f"{words} broken")
    (root / "garbage.png").write_bytes(b"not an image at all")  # PIL names the BytesIO object here
    (root / "garbage.txt").write_text(f"{words} garbage")
    (root / "truncated.png").write_bytes(_png(20)[:200])
    (root / "truncated.txt").write_text(f"{words} cut")
    (root / "small.png").write_bytes(_png(21, size=(60, 60)))
    (root / "small.txt").write_text(f"{words} small")
    (root / "terse.png").write_bytes(_png(22))
    (root / "terse.txt").write_text("blocks")
    (root / "nocaption.png").write_bytes(_png(23))
    with tarfile.open(root / "shard-000.tar", "w") as tar:
        for key, payload in (("s0.png", _png(30)), ("s0.txt", f"{words} from a tar".encode())):
            info = tarfile.TarInfo(key)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return root


def _config(folder, **data):
    return parse(
        resolve(
            {
                "data": {
                    "sources": {
                        "synthetic": {"enabled": False},
                        "photos": {"enabled": False},
                        "folder": {"enabled": True, "path": str(folder)},
                    },
                    "captioning": {"draft": {"folder": "sidecar"}},
                    "filters": {"min_resolution": 100, "min_caption_words": 3, "phash_max_distance": 4},
                    "splits": {"val_count": 2, "bench_count": 2},
                    "resolutions": [32, 64],
                    **data,
                },
                "pretrain": {"encoder": {"resolution": 64}},
            }
        )
    )


def _build(cfg, tmp_path):
    raw, caps = tmp_path / "raw.parquet", tmp_path / "caps.parquet"
    data_build.collect(cfg.data, "folder", 0, raw)
    rows = data_build.caption(cfg.data.captioning, "folder", raw, seed=0)
    data_build.write_parquet(caps, rows, data_build.CAPTION_SCHEMA)
    summary = data_build.build(cfg.data, 0, [raw], [caps], tmp_path / "shards", tmp_path / "manifest.duckdb")
    return summary


def test_bad_inputs_are_rejected_with_reasons(user_folder, tmp_path):
    summary = _build(_config(user_folder), tmp_path)
    with duckdb.connect(str(tmp_path / "manifest.duckdb"), read_only=True) as con:
        verdicts = dict(con.execute("SELECT item_id, coalesce(reason, split) FROM images").fetchall())
    assert verdicts["corrupt.jpg"].startswith("unreadable_image: ")
    assert verdicts["truncated.png"].startswith("unreadable_image: ")
    assert verdicts["garbage.png"] == "unreadable_image: UnidentifiedImageError: cannot identify image file"
    assert " at 0x" not in "".join(verdicts.values())
    assert verdicts["small.png"] == "too_small: 60x60 < 100"
    assert verdicts["terse.png"] == "caption_too_short: 1 < 3 words"
    assert verdicts["nocaption.png"].startswith("caption_failed: no sidecar caption")
    # the first of two near-duplicates in (source, id) order is kept
    assert verdicts["copy_of_good0.png"] in {"train", "val", "bench"}
    assert verdicts["good0.png"] == "near_duplicate: of folder/copy_of_good0.png"
    assert verdicts["shard-000.tar/s0"] in {"train", "val", "bench"}
    assert summary["kept"] == 9 and summary["total"] == 16
    assert summary["splits"] == {"train": 5, "val": 2, "bench": 2}


def test_summary_counts_rejections_by_class(user_folder, tmp_path):
    summary = _build(_config(user_folder), tmp_path)
    # by class, never by exception text: the three unreadable files fail with different errors
    assert summary["rejected"] == {
        "caption_failed": 1,
        "caption_too_short": 1,
        "near_duplicate": 1,
        "too_small": 1,
        "unreadable_image": 3,
    }
    with duckdb.connect(str(tmp_path / "manifest.duckdb"), read_only=True) as con:
        classes = {
            r[0]
            for r in con.execute(
                "SELECT split_part(reason, ':', 1) FROM images WHERE reason IS NOT NULL"
            ).fetchall()
        }
    assert classes <= set(data_build.REASON_CLASSES)


def _build_in_subprocess(folder, out) -> None:
    """A whole build in a fresh interpreter: object addresses differ between processes."""
    code = (
        "import sys; from pathlib import Path; from tests import test_data_build as t; "
        "t._build(t._config(Path(sys.argv[1])), Path(sys.argv[2]))"
    )
    subprocess.run([sys.executable, "-c", code, str(folder), str(out)], check=True, cwd=REPO, timeout=300)


def test_identical_builds_give_byte_equal_reasons(user_folder, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _build_in_subprocess(user_folder, a)
    _build(_config(user_folder), b)
    first, second = _splits(a / "manifest.duckdb"), _splits(b / "manifest.duckdb")
    assert [r[2] for r in first] == [r[2] for r in second]
    assert first == second


def _jpeg_with_orientation(orientation: int) -> bytes:
    """A landscape JPEG (red left half) whose EXIF says how the camera was held."""
    pixels = np.zeros((120, 200, 3), dtype=np.uint8)
    pixels[:, :100] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def test_exif_orientation_is_applied_everywhere_user_images_are_read(tmp_path):
    from workflow_scripts.data import images
    from workflow_scripts.eval import items

    # orientation 6: the stored pixels must be turned 90° clockwise to be upright (portrait)
    rotated = _jpeg_with_orientation(6)
    image = images.decode(rotated).image
    assert image.size == (120, 200)
    top, bottom = np.asarray(image)[10, 60], np.asarray(image)[190, 60]
    assert top[0] > 200 > top[2] and bottom[0] < 50  # the red half is on top after turning clockwise
    assert images.decode(_jpeg_with_orientation(1)).image.size == (200, 120)

    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "phone.jpg").write_bytes(rotated)
    ((name, picture, _),) = items.folder_pictures(str(bench))
    assert name == "phone.jpg" and picture.size == (120, 200)

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        (folder / f"good{i}.png").write_bytes(_png(i))
        (folder / f"good{i}.txt").write_text(f"a picture of colourful blocks number {i}")
    (folder / "phone.jpg").write_bytes(rotated)
    (folder / "phone.txt").write_text("a red and black phone photo")
    _build(_config(folder, splits={"val_count": 1, "bench_count": 1}), tmp_path)
    with duckdb.connect(str(tmp_path / "manifest.duckdb"), read_only=True) as con:
        size = con.execute("SELECT width, height FROM images WHERE item_id = 'phone.jpg'").fetchone()
    assert size == (120, 200)


def test_splits_are_disjoint_and_shards_hold_every_resolution(user_folder, tmp_path):
    _build(_config(user_folder), tmp_path)
    seen = {}
    for split in ("train", "val", "bench"):
        for resolution in (32, 64):
            ds = ShardDataset(tmp_path / "shards", split, resolution)
            ids = {ds[i].image_id for i in range(len(ds))}
            assert all(ds[i].image.size == (resolution, resolution) for i in range(len(ds)))
            seen.setdefault(split, ids)
            assert seen[split] == ids
    assert (
        not (seen["train"] & seen["val"])
        and not (seen["train"] & seen["bench"])
        and not (seen["val"] & seen["bench"])
    )
    with duckdb.connect(str(tmp_path / "manifest.duckdb"), read_only=True) as con:
        counts = dict(
            con.execute("SELECT split, count(*) FROM images WHERE verdict = 'kept' GROUP BY split").fetchall()
        )
    assert counts == {s: len(ids) for s, ids in seen.items()}


def _splits(manifest):
    with duckdb.connect(str(manifest), read_only=True) as con:
        return con.execute("SELECT image_id, split, reason FROM images ORDER BY image_id").fetchall()


def test_build_is_deterministic(user_folder, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _build(_config(user_folder), a)
    _build(_config(user_folder), b)
    assert _splits(a / "manifest.duckdb") == _splits(b / "manifest.duckdb")


def test_too_few_images_names_the_splits_key(user_folder, tmp_path):
    cfg = _config(user_folder, splits={"val_count": 5, "bench_count": 5})
    with pytest.raises(ValueError, match=r"data\.splits"):
        _build(cfg, tmp_path)


def test_missing_folder_names_the_key(tmp_path):
    cfg = _config(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"data\.sources\.folder\.path"):
        data_build.collect(cfg.data, "folder", 0, tmp_path / "raw.parquet")


def test_synthetic_items_carry_their_scene_graph(tmp_path):
    cfg = parse(resolve({"data": {"sources": {"synthetic": {"count": 3}}}}))
    data_build.collect(cfg.data, "synthetic", 0, tmp_path / "raw.parquet")
    rows = data_build.caption(cfg.data.captioning, "synthetic", tmp_path / "raw.parquet", seed=0)
    import pyarrow.parquet as pq

    raw = pq.read_table(tmp_path / "raw.parquet").to_pylist()
    for item, row in zip(raw, rows, strict=True):
        scene = json.loads(item["meta"])["scene"]
        assert row["captioner"] == "scene_graph"
        for obj in scene["objects"]:
            assert f"{obj['size']} {obj['color']} {obj['shape']}" in row["caption"]
