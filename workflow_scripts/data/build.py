"""Collect, caption and build: raw items -> captions -> filtered, split, resized shards + DuckDB manifest."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workflow_scripts import atomic
from workflow_scripts.data import captioners, images, shards
from workflow_scripts.data.config import CaptioningConfig, DataConfig
from workflow_scripts.data.sources import COLLECTORS
from workflow_scripts.seeding import derive_seed

log = logging.getLogger(__name__)


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
    atomic.write_bytes(path, sink.getvalue().to_pybytes())


RAW_SCHEMA = pa.schema(
    [("source", pa.string()), ("item_id", pa.string()), ("data", pa.binary()), ("meta", pa.string())]
)
CAPTION_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("item_id", pa.string()),
        ("draft", pa.string()),
        ("caption", pa.string()),
        ("captioner", pa.string()),
        ("error", pa.string()),
    ]
)


def collect(cfg: DataConfig, source: str, seed: int, out: Path) -> int:
    source_cfg = getattr(cfg.sources, source)
    rows = [item.row() for item in COLLECTORS[source](source_cfg, seed)]
    if not rows:
        raise ValueError(f"data.sources.{source}: produced no images; check its settings or disable it")
    write_parquet(out, rows, RAW_SCHEMA)
    log.info("collected %d items from %s -> %s", len(rows), source, out)
    return len(rows)


def caption(
    cfg: CaptioningConfig,
    source: str,
    raw: Path,
    seed: int,
    rank: int = 0,
    world: int = 1,
    device: str = "cpu",
) -> list[dict]:
    """Caption this rank's share (rows rank::world) of a raw source file."""
    items = pq.read_table(raw).to_pylist()[rank::world]
    kind = cfg.draft[source]
    if kind == "vlm":
        drafts = captioners.VLMDrafter(cfg.draft_model, seed, device)(items)
    else:
        drafts = captioners.SIMPLE_DRAFTERS[kind](items)
    refined = captioners.LLMRefiner(cfg.refine_model, seed, device)(drafts) if cfg.refine == "llm" else drafts
    name = kind if cfg.refine == "none" else f"{kind}+llm"
    return [
        {
            "source": item["source"],
            "item_id": item["item_id"],
            "draft": d.text,
            "caption": r.text,
            "captioner": name,
            "error": r.error or d.error,
        }
        for item, d, r in zip(items, drafts, refined, strict=True)
    ]


# Every rejection is one of these classes; the manifest's reason is "<class>: <detail>" and the build
# summary counts by class (details such as sizes or exception text never split a class).
REASON_CLASSES = (
    "unreadable_image",
    "too_small",
    "caption_failed",
    "caption_too_short",
    "caption_too_long",
    "near_duplicate",
)


@dataclass(frozen=True)
class Rejection:
    kind: str  # one of REASON_CLASSES
    detail: str

    def __post_init__(self) -> None:
        if self.kind not in REASON_CLASSES:
            raise ValueError(f"unknown rejection class {self.kind!r}; add it to REASON_CLASSES")

    @property
    def text(self) -> str:
        return f"{self.kind}: {self.detail}"


def build(
    cfg: DataConfig,
    seed: int,
    raw_paths: list[Path],
    caption_paths: list[Path],
    shards_dir: Path,
    manifest: Path,
) -> dict:
    """Filter, deduplicate, split, resize and shard; write the manifest. Returns counts per split/reason."""
    captions = {}
    for path in caption_paths:
        for row in pq.read_table(path).to_pylist():
            captions[(row["source"], row["item_id"])] = row
    records = []
    kept_hashes: list[tuple[int, str]] = []
    for path in sorted(raw_paths):
        for item in pq.read_table(path).to_pylist():
            cap = captions.get((item["source"], item["item_id"]))
            record, image = _inspect(item, cap, cfg, kept_hashes)
            records.append(record)
            if record["verdict"] == "kept":
                record["_image"] = image
    kept = [r for r in records if r["verdict"] == "kept"]
    _assign_splits(kept, cfg, seed)
    rows_by_split: dict[str, list[dict]] = {s: [] for s in shards.SPLITS}
    for record in kept:
        image = record.pop("_image")
        row = {k: record[k] for k in ("image_id", "source", "caption", "meta")}
        for resolution in cfg.resolutions:
            row[shards.image_column(resolution)] = images.png_bytes(images.square(image, resolution))
        rows_by_split[record["split"]].append(row)
    with atomic.directory(shards_dir) as tmp:
        for split, rows in rows_by_split.items():
            shards.write(rows, tmp, split, cfg.shard_size)
    _write_manifest(records, manifest)
    summary = {
        "total": len(records),
        "kept": len(kept),
        "splits": {s: len(r) for s, r in rows_by_split.items()},
        "rejected": dict(sorted(Counter(r["reason_class"] for r in records if r["reason_class"]).items())),
    }
    log.info("data build: %s", json.dumps(summary))
    return summary


def _inspect(item: dict, cap: dict | None, cfg: DataConfig, kept_hashes: list[tuple[int, str]]):
    image_id = f"{item['source']}/{item['item_id']}"
    record = {
        "image_id": image_id,
        "source": item["source"],
        "item_id": item["item_id"],
        "sha256": images.sha256(item["data"]),
        "phash": None,
        "width": None,
        "height": None,
        "caption": cap["caption"] if cap else None,
        "caption_words": len(cap["caption"].split()) if cap and cap["caption"] else None,
        "captioner": cap["captioner"] if cap else None,
        "meta": item["meta"],
        "split": None,
        "verdict": "rejected",
        "reason": None,
        "reason_class": None,  # not in the manifest: the summary counts by it
    }
    decoded = images.decode(item["data"])
    if decoded.image is None:
        _reject(record, Rejection("unreadable_image", decoded.cause or "unknown"))
        return record, None
    image = decoded.image
    record["width"], record["height"] = image.size
    rejection = _reject_reason(image, cap, cfg)
    if rejection is None:
        phash = images.perceptual_hash(image)
        record["phash"] = f"{phash:016x}"
        twin = next(
            (i for h, i in kept_hashes if images.hamming(h, phash) <= cfg.filters.phash_max_distance), None
        )
        if twin is not None:
            rejection = Rejection("near_duplicate", f"of {twin}")
        else:
            kept_hashes.append((phash, image_id))
            record["verdict"] = "kept"
    if rejection is not None:
        _reject(record, rejection)
    return record, image


def _reject(record: dict, rejection: Rejection) -> None:
    record["reason"], record["reason_class"] = rejection.text, rejection.kind
    log.info("rejected %s: %s", record["image_id"], rejection.text)


def _reject_reason(image, cap: dict | None, cfg: DataConfig) -> Rejection | None:
    f = cfg.filters
    if min(image.size) < f.min_resolution:
        return Rejection("too_small", f"{image.size[0]}x{image.size[1]} < {f.min_resolution}")
    if cap is None or not cap["caption"]:
        return Rejection("caption_failed", (cap["error"] or "empty caption") if cap else "no caption row")
    words = len(cap["caption"].split())
    if words < f.min_caption_words:
        return Rejection("caption_too_short", f"{words} < {f.min_caption_words} words")
    if words > f.max_caption_words:
        return Rejection("caption_too_long", f"{words} > {f.max_caption_words} words")
    return None


def _assign_splits(kept: list[dict], cfg: DataConfig, seed: int) -> None:
    held_out = cfg.splits.bench_count + cfg.splits.val_count
    if len(kept) <= held_out:
        raise ValueError(
            f"only {len(kept)} images passed the filters but data.splits holds out {held_out} "
            f"(bench {cfg.splits.bench_count} + val {cfg.splits.val_count}) and train needs at least one: "
            "add images, loosen data.filters or shrink data.splits"
        )
    # order by content hash, then a seeded permutation: splits depend on the images, not on source order
    ordered = sorted(kept, key=lambda r: r["sha256"])
    order = np.random.default_rng(derive_seed(seed, "splits")).permutation(len(ordered))
    for rank, i in enumerate(order):
        split = "bench" if rank < cfg.splits.bench_count else "val" if rank < held_out else "train"
        ordered[i]["split"] = split


MANIFEST_DDL = """
CREATE TABLE images (
    image_id VARCHAR PRIMARY KEY, source VARCHAR, item_id VARCHAR, sha256 VARCHAR, phash VARCHAR,
    width INTEGER, height INTEGER, caption VARCHAR, caption_words INTEGER, captioner VARCHAR,
    meta JSON, split VARCHAR, verdict VARCHAR, reason VARCHAR
)
"""


def _write_manifest(records: list[dict], manifest: Path) -> None:
    manifest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=manifest.parent, prefix=".manifest.", suffix=".duckdb")
    os.close(fd)
    os.unlink(tmp)  # duckdb creates the file itself
    try:
        with duckdb.connect(tmp) as con:
            con.execute(MANIFEST_DDL)
            columns = [
                "image_id",
                "source",
                "item_id",
                "sha256",
                "phash",
                "width",
                "height",
                "caption",
                "caption_words",
                "captioner",
                "meta",
                "split",
                "verdict",
                "reason",
            ]
            con.register("manifest_rows", pa.Table.from_pylist([{c: r[c] for c in columns} for r in records]))
            con.execute(f"INSERT INTO images SELECT {', '.join(columns)} FROM manifest_rows")
            con.execute("CHECKPOINT")
        os.replace(tmp, manifest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
