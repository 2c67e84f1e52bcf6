"""Training shards: parquet files per split, one PNG column per training resolution.

``<shards>/<split>-00000.parquet`` columns: image_id, source, caption, meta (JSON), image_<R> (PNG bytes)
for every R in data.resolutions.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from workflow_scripts import atomic
from workflow_scripts.data.images import open_png

SPLITS = ("train", "val", "bench")


def image_column(resolution: int) -> str:
    return f"image_{resolution}"


def write(rows: list[dict], folder: Path, split: str, shard_size: int) -> list[Path]:
    paths = []
    for number, start in enumerate(range(0, len(rows), shard_size)):
        table = pa.Table.from_pylist(rows[start : start + shard_size])
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=min(shard_size, 256))
        path = folder / f"{split}-{number:05d}.parquet"
        atomic.write_bytes(path, sink.getvalue().to_pybytes())
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Record:
    image_id: str
    caption: str
    image: Image.Image
    meta: dict


class ShardDataset:
    """Random access to one split at one resolution; reads one row group at a time."""

    def __init__(self, folder: str | Path, split: str, resolution: int) -> None:
        self.files = sorted(Path(folder).glob(f"{split}-*.parquet"))
        self.column = image_column(resolution)
        self.offsets = [0]
        for path in self.files:
            meta = pq.ParquetFile(path)
            if self.column not in meta.schema_arrow.names:
                raise ValueError(
                    f"{path} has no {self.column}: rebuild the data with {resolution} in data.resolutions"
                )
            self.offsets.append(self.offsets[-1] + meta.metadata.num_rows)

    def __len__(self) -> int:
        return self.offsets[-1]

    @lru_cache(maxsize=8)  # noqa: B019 - the dataset lives as long as its job
    def _row_group(self, file_index: int, group: int) -> list[dict]:
        columns = ["image_id", "caption", "meta", self.column]
        return pq.ParquetFile(self.files[file_index]).read_row_group(group, columns=columns).to_pylist()

    def __getitem__(self, index: int) -> Record:
        if not 0 <= index < len(self):
            raise IndexError(index)
        file_index = bisect.bisect_right(self.offsets, index) - 1
        local = index - self.offsets[file_index]
        metadata = pq.ParquetFile(self.files[file_index]).metadata
        group = 0
        while local >= metadata.row_group(group).num_rows:
            local -= metadata.row_group(group).num_rows
            group += 1
        row = self._row_group(file_index, group)[local]
        return Record(row["image_id"], row["caption"], open_png(row[self.column]), json.loads(row["meta"]))
