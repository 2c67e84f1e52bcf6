"""Pre-tokenised records: token-id shards + a record index (the released format, in parquet).

``tokens-NNNNN.parquet`` rows: record_id, source, task, input_ids, labels, images (PNG bytes, in order).
``index.parquet``: record_id, shard, row, length, source, task. ``rejected-NNNNN.jsonl``: what was
dropped and why.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("source", pa.string()),
        ("task", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("images", pa.list_(pa.binary())),
    ]
)
INDEX_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("shard", pa.int32()),
        ("row", pa.int32()),
        ("length", pa.int32()),
        ("source", pa.string()),
        ("task", pa.string()),
    ]
)


def shard_file(folder: Path, shard: int) -> Path:
    return Path(folder) / f"tokens-{shard:05d}.parquet"


def rejected_file(folder: Path, shard: int) -> Path:
    return Path(folder) / f"rejected-{shard:05d}.jsonl"


def upright(image: Image.Image) -> Image.Image:
    """RGB pixels as the camera meant them: a photo's EXIF orientation applied (phone pictures are
    stored sideways with an orientation tag; without it the VQ codes and SigLIP see a rotated image)."""
    return ImageOps.exif_transpose(image).convert("RGB")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class TokenRecords:
    """Records of some tasks, by position, read lazily from their shards."""

    def __init__(self, folder: Path, tasks: list[str]):
        self.folder = Path(folder)
        index = pq.read_table(self.folder / "index.parquet").to_pylist()
        self.rows = [r for r in index if r["task"] in tasks]
        if not self.rows:
            raise ValueError(
                f"{self.folder}: no pre-tokenised records of tasks {tasks}; check unitoken.pretokenize "
                "sources and the rejected-*.jsonl files"
            )

    def __len__(self) -> int:
        return len(self.rows)

    @lru_cache(maxsize=8)  # noqa: B019 - a handful of shards, read once each
    def _shard(self, shard: int) -> pa.Table:
        return pq.read_table(shard_file(self.folder, shard))

    def __getitem__(self, position: int) -> dict:
        row = self.rows[position]
        record = self._shard(row["shard"]).slice(row["row"], 1).to_pylist()[0]
        record["images"] = [upright(Image.open(io.BytesIO(b))) for b in record["images"]]
        return record
