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
from workflow_scripts.eval import geneval, geneval_pp, mmt
from workflow_scripts.eval.config import EvalConfig
from workflow_scripts.seeding import derive_seed


def write(
    folder: Path, items: list[dict], pictures: dict[str, Image.Image], protocol: dict | None = None
) -> None:
    with atomic.directory(folder) as tmp:
        (tmp / "images").mkdir()
        for name, picture in pictures.items():
            picture.save(tmp / "images" / name)
        (tmp / "items.jsonl").write_text("".join(json.dumps(i, sort_keys=True) + "\n" for i in items))
        if protocol is not None:
            (tmp / PROTOCOL).write_text(json.dumps(protocol, sort_keys=True) + "\n")


def read(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines() if line.strip()]


PROTOCOL = "protocol.json"
OFFICIAL_UNIFIED_BENCH_IMAGES = 100  # the release's UniBench/Image


def protocol(folder: Path) -> dict:
    """What the item set says about its protocol (``benchmark_protocol`` and ``deviations``); the scorer
    adds the detector's and judge's part. An item set written before this existed says nothing."""
    path = Path(folder) / PROTOCOL
    return json.loads(path.read_text()) if path.is_file() else {}


def score_protocol(item_set: Path, scoring: dict | None = None) -> dict:
    """A score record's "protocol": the item set's part, then the scorer's (detector, judge), deviations
    of both."""
    items_part, scoring = protocol(item_set), scoring or {}
    return {
        "benchmark_protocol": items_part.get("benchmark_protocol"),
        "detector": scoring.get("detector"),
        "judge": scoring.get("judge"),
        "deviations": [*items_part.get("deviations", []), *scoring.get("deviations", [])],
    }


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
    """The release's flat image folder, in file-name order, each image keyed by its file name (the
    release matches reconstructions to references by name) and read upright (EXIF orientation applied by
    ``images.decode``). Anything else in it stops the build, naming the file: a silently skipped or
    half-read reference image would change the benchmark. Hidden files (``.DS_Store``) are ignored."""
    key = "eval.unified_bench.folder"
    out = []
    for path in sorted(Path(folder).iterdir(), key=lambda p: p.name):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            raise ValueError(
                f"{key}: {path} is a folder; the Unified-Bench folder holds only the images (flat, like "
                "the release's UniBench/Image): move it out"
            )
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(
                f"{key}: {path} is not an image ({', '.join(IMAGE_SUFFIXES)}): move it out of the folder"
            )
        decoded = images.decode(path.read_bytes())
        if decoded.image is None:
            raise ValueError(f"{key}: {path} cannot be read ({decoded.error}): replace or remove it")
        out.append((path.name, decoded.image, {}))
    if not out:
        raise ValueError(f"{key}: no images in {folder}")
    return out


def folder_items(source: list[tuple[str, Image.Image, dict]], seed: int, bench: str) -> tuple[list, dict]:
    """Items keyed by the image's file name; the stored copy is a PNG under a positional name, so a
    JPEG is never re-encoded lossily and two names differing only by suffix cannot collide."""
    items, files = reconstruction_items(source, seed, bench)
    for item in items:
        item["item_id"] = item["image_id"]
    return items, files


def unified_bench_protocol(cfg: EvalConfig, count: int) -> dict:
    if cfg.unified_bench.folder:
        deviations = (
            []
            if count == OFFICIAL_UNIFIED_BENCH_IMAGES
            else [f"{count} images in the folder (the release scores {OFFICIAL_UNIFIED_BENCH_IMAGES})"]
        )
        return {"benchmark_protocol": "official image folder", "deviations": deviations}
    return {
        "benchmark_protocol": "own bench split",
        "deviations": ["not the official image set (the data build's bench split)"],
    }


def geneval_protocol(cfg: EvalConfig) -> dict:
    spec = cfg.geneval
    deviations = []
    if spec.items_file:
        name = "official items file"
    elif spec.vocabulary == "shapes":
        name = "shapes-world items"
        deviations.append("shapes-world classes, not COCO's 80")
    else:
        name = "official recipe (553 prompts)"
        if (spec.prompts_per_task, spec.seed) != (100, 43):
            name = "recipe"
            deviations.append(
                f"{spec.prompts_per_task} prompts per task, seed {spec.seed} (official: 100, 43)"
            )
    if spec.images_per_prompt != 4:
        deviations.append(f"{spec.images_per_prompt} images per prompt (official: 4)")
    return {"benchmark_protocol": name, "deviations": deviations}


def build(bench: str, cfg: EvalConfig, seed: int, shards: Path, out: Path) -> int:
    protocol = None
    if bench == "unified_bench":
        if cfg.unified_bench.folder:
            items, files = folder_items(folder_pictures(cfg.unified_bench.folder), seed, bench)
        else:
            source = split_pictures(shards, "bench", cfg.unified_bench.resolution)
            items, files = reconstruction_items(source, seed, bench)
        protocol = unified_bench_protocol(cfg, len(items))
    elif bench in ("geneval", "geneval_pp"):
        items, files = _generation_items(bench, cfg, seed), {}
        if bench == "geneval":
            protocol = geneval_protocol(cfg)
        else:
            protocol = geneval_pp.item_protocol(cfg.geneval_pp, len(items))
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
    write(out, items, files, protocol)
    return len(items)


def _generation_items(bench: str, cfg: EvalConfig, seed: int) -> list[dict]:
    if bench == "geneval_pp":  # official lines, or shapes-world lines in their format; one image each
        pp = cfg.geneval_pp
        lines = (
            geneval_pp.read_items(pp.items_file)
            if pp.items_file
            else geneval_pp.build_items(pp.items_per_tag, pp.seed)
        )
        return geneval_pp.item_set(lines, seed)
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
    return [
        {
            "item_id": f"{i:05d}",
            **m,
            "seeds": [derive_seed(seed, bench, i, n) for n in range(spec.images_per_prompt)],
        }
        for i, m in enumerate(metadata)
    ]
