"""One shard of a benchmark's model calls: every (shard-th) item, its fixed seeds, PNG outputs, records.

A shard folder holds ``records.jsonl`` (one per output: ids, prompt or input image, seed, caption or
answer, output image path) and ``images/``. Items go to shard ``index % shards``, and every output
depends only on its item and seed, so aggregates do not depend on the shard count.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from workflow_scripts import atomic
from workflow_scripts.eval import geneval_pp, mmt
from workflow_scripts.eval.config import EvalConfig
from workflow_scripts.eval.items import read
from workflow_scripts.eval.systems import UAE_PARTS, System

log = logging.getLogger(__name__)

# the parts of a UAE system each benchmark calls
PARTS = {
    "unified_bench": UAE_PARTS,
    "geneval": ("text_encoder", "decoder"),
    "geneval_pp": ("text_encoder", "decoder"),
    "mmt": ("captioner",),
}


def shard_items(items: list[dict], shard: int, shards: int) -> list[dict]:
    return [item for i, item in enumerate(items) if i % shards == shard]


def generate(
    bench: str, items_dir: Path, system: System, cfg: EvalConfig, shard: int, out: Path, key: str = ""
) -> int:
    """Generate one shard's records into ``out`` (atomically); ``key`` identifies what made them."""
    items = shard_items(read(items_dir), shard, cfg.shards)
    records: list[dict] = []
    with atomic.directory(out) as tmp:
        (tmp / "images").mkdir()
        for item in tqdm(items, desc=f"{system.name}/{bench}/shard{shard}", unit="item", mininterval=5):
            records.extend(_CALLS[bench](item, items_dir, system, cfg, tmp / "images", bench))
        (tmp / "records.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        (tmp / "key.txt").write_text(key)
    log.info("%s %s shard %d: %d items, %d records", system.name, bench, shard, len(items), len(records))
    return len(records)


def reconstruct(
    item, items_dir: Path, system: System, cfg: EvalConfig, images: Path, bench: str
) -> list[dict]:
    original = Image.open(items_dir / "images" / item["image"]).convert("RGB")
    caption = system.caption(original, item["seed"])
    (redrawn,) = system.draw([caption], [item["seed"]], cfg.unified_bench.resolution)
    name = f"{item['item_id']}.png"
    redrawn.save(images / name)
    return [
        {
            "item_id": item["item_id"],
            "image_id": item["image_id"],
            "input": item["image"],
            "seed": item["seed"],
            "caption": caption,
            "output": f"images/{name}",
        }
    ]


def _draw(item, items_dir: Path, system: System, cfg: EvalConfig, images: Path, bench: str) -> list[dict]:
    spec = getattr(cfg, bench)
    pictures = system.draw([item["prompt"]] * len(item["seeds"]), item["seeds"], spec.resolution)
    records = []
    for n, (picture, seed) in enumerate(zip(pictures, item["seeds"], strict=True)):
        name = f"{item['item_id']}_{n}.png"
        picture.save(images / name)
        records.append(
            {
                "item_id": item["item_id"],
                "sample": n,
                "seed": seed,
                "tag": item["tag"],
                "prompt": item["prompt"],
                "metadata": json.dumps(
                    {k: item[k] for k in ("tag", "include", "exclude", "prompt") if k in item}
                ),
                "output": f"images/{name}",
            }
        )
    return records


def _answer(item, items_dir: Path, system: System, cfg: EvalConfig, images: Path, bench: str) -> list[dict]:
    picture = Image.open(items_dir / "images" / item["image"]).convert("RGB")
    variants = (
        mmt.rotations(item["options"], item["answer"])
        if cfg.mmt.circular
        else [(item["options"], item["answer"])]
    )
    return [
        {
            "item_id": item["item_id"],
            "task": item["task"],
            "rotation": k,
            "question": item["question"],
            "options": options,
            "answer": answer,
            "input": item["image"],
            "answer_text": system.answer(picture, mmt.prompt(item["question"], options)),
        }
        for k, (options, answer) in enumerate(variants)
    ]


_CALLS = {"unified_bench": reconstruct, "geneval": _draw, "geneval_pp": geneval_pp.draw, "mmt": _answer}
