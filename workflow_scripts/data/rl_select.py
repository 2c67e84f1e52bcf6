"""The curated RL split: a recorded rule picks images from the train split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from workflow_scripts import atomic
from workflow_scripts.data import shards
from workflow_scripts.data.config import RLDataConfig
from workflow_scripts.data.images import open_png
from workflow_scripts.seeding import derive_seed

log = logging.getLogger(__name__)


def sharpness(png: bytes) -> float:
    """Variance of the Laplacian of the grey image: low for blurry or flat images."""
    grey = np.asarray(open_png(png).convert("L"), dtype=np.float64)
    lap = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    return float(lap.var())


def select(cfg: RLDataConfig, seed: int, shards_dir: Path, resolutions: list[int], out_dir: Path) -> dict:
    rows = []
    for path in sorted(shards_dir.glob("train-*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    if cfg.count > len(rows):
        raise ValueError(f"rl.data.count = {cfg.count} but the train split has {len(rows)} images; lower it")
    rows.sort(key=lambda r: r["image_id"])
    if cfg.rule == "random":
        order = np.random.default_rng(derive_seed(seed, "rl_split")).permutation(len(rows))
        scores = {rows[i]["image_id"]: float(-rank) for rank, i in enumerate(order)}
    elif cfg.rule == "caption_words":
        scores = {r["image_id"]: float(len(r["caption"].split())) for r in rows}
    else:
        column = shards.image_column(max(resolutions))
        scores = {r["image_id"]: sharpness(r[column]) for r in rows}
    chosen = sorted(rows, key=lambda r: (-scores[r["image_id"]], r["image_id"]))[: cfg.count]
    with atomic.directory(out_dir) as tmp:
        shards.write(chosen, tmp, "rl", max(1, len(chosen)))
        record = {
            "rule": cfg.rule,
            "count": cfg.count,
            "seed": seed,
            "images": [{"image_id": r["image_id"], "score": scores[r["image_id"]]} for r in chosen],
        }
        (tmp / "selection.json").write_text(json.dumps(record, indent=2))
    log.info("RL split: %d of %d train images by %s", len(chosen), len(rows), cfg.rule)
    return {"rule": cfg.rule, "selected": len(chosen), "from": len(rows)}
