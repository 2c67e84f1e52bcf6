"""Benchmark item sets: built from the same recipe as the official ones, or read from the official files.

An item set is a folder: ``items.jsonl`` (one item per line) and ``images/`` (input images, PNG).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from workflow_scripts import atomic
from workflow_scripts.data import images, scenes
from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.data.sources import IMAGE_SUFFIXES
from workflow_scripts.eval import geneval, mmt
from workflow_scripts.eval.config import EvalConfig
from workflow_scripts.seeding import derive_seed


def write(folder: Path, items: list[dict], pictures: dict[str, Image.Image]) -> None:
    with atomic.directory(folder) as tmp:
        (tmp / "images").mkdir()
        for name, picture in pictures.items():
            picture.save(tmp / "images" / name)
        (tmp / "items.jsonl").write_text("".join(json.dumps(i, sort_keys=True) + "\n" for i in items))


def read(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines() if line.strip()]


def reconstruction_items(
    pictures: list[tuple[str, Image.Image, dict]], seed: int, bench: str
) -> tuple[list, dict]:
    """(image id, image, meta) -> Unified-Bench-style items: caption it, redraw it, compare."""
    items, files = [], {}
    for image_id, picture, meta in pictures:
        name = f"{len(items):05d}.png"
        files[name] = picture
        items.append(
            {
                "item_id": f"{len(items):05d}",
                "image_id": image_id,
                "image": name,
                "meta": meta,
                "seed": derive_seed(seed, bench, image_id),
            }
        )
    return items, files


def split_pictures(
    shards: Path, split: str, resolution: int, limit: int = 0
) -> list[tuple[str, Image.Image, dict]]:
    data = ShardDataset(shards, split, resolution)
    count = len(data) if not limit else min(limit, len(data))
    return [(r.image_id, r.image, r.meta) for r in (data[i] for i in range(count))]


def folder_pictures(folder: str) -> list[tuple[str, Image.Image, dict]]:
    out = []
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            decoded = images.decode(path.read_bytes())
            if decoded.image is None:
                raise ValueError(f"eval.unified_bench.folder: {path}: {decoded.error}")
            out.append((path.name, decoded.image, {}))
    if not out:
        raise ValueError(f"eval.unified_bench.folder: no images in {folder}")
    return out


def build(bench: str, cfg: EvalConfig, seed: int, shards: Path, out: Path) -> int:
    if bench == "unified_bench":
        source = (
            folder_pictures(cfg.unified_bench.folder)
            if cfg.unified_bench.folder
            else split_pictures(shards, "bench", cfg.unified_bench.resolution)
        )
        items, files = reconstruction_items(source, seed, bench)
    elif bench in ("geneval", "geneval_pp"):
        items, files = _generation_items(bench, cfg, seed), {}
    elif bench == "mmt":
        probes = (
            mmt.read_tsv(cfg.mmt.tsv, dict(cfg.mmt.categories))
            if cfg.mmt.tsv
            else mmt.build_probes(cfg.mmt.questions_per_task, cfg.mmt.seed, cfg.mmt.resolution)
        )
        items, files = [], {}
        for probe in probes:
            name = f"{probe['item_id']}.png"
            files[name] = probe.pop("image")
            items.append({**probe, "image": name})
    else:
        raise ValueError(f"unknown benchmark '{bench}'")
    write(out, items, files)
    return len(items)


def _generation_items(bench: str, cfg: EvalConfig, seed: int) -> list[dict]:
    spec = getattr(cfg, bench)
    if spec.items_file:
        metadata = [
            json.loads(line) for line in Path(spec.items_file).read_text().splitlines() if line.strip()
        ]
    elif bench == "geneval":
        classes = list(geneval.COCO_CLASSES) if spec.vocabulary == "coco" else list(scenes.SHAPES)
        metadata = geneval.geneval_prompts(
            classes,
            per_task=spec.prompts_per_task,
            seed=spec.seed,
            colorless="person" if spec.vocabulary == "coco" else None,
        )
    else:
        classes = list(geneval.COCO_CLASSES) if cfg.geneval.vocabulary == "coco" else list(scenes.SHAPES)
        metadata = geneval.geneval_pp_prompts(classes, per_category=spec.prompts_per_category, seed=spec.seed)
    return [
        {
            "item_id": f"{i:05d}",
            **m,
            "seeds": [derive_seed(seed, bench, i, n) for n in range(spec.images_per_prompt)],
        }
        for i, m in enumerate(metadata)
    ]
