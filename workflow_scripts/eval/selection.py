"""Checkpoint selection: score every saved checkpoint of an RL stage on the validation split (never the
bench split) with Unified-Bench, record every candidate's scores, and pick the best."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from workflow_scripts.eval import generate, items, score
from workflow_scripts.eval.config import EvalConfig
from workflow_scripts.eval.systems import System

log = logging.getLogger(__name__)


def candidates(final: Path) -> list[tuple[int, Path]]:
    """Every complete checkpoint's exported model (the stage's keep_last newest)."""
    found = []
    for folder in sorted((final.parent / "checkpoints").glob("step_*")):
        meta = folder / "checkpoint.json"
        if meta.exists() and (folder / "model").is_dir():
            found.append((json.loads(meta.read_text())["step"], folder / "model"))
    if not found:
        raise FileNotFoundError(f"no checkpoints with a model export under {final.parent / 'checkpoints'}")
    return found


def select(
    stage: str, candidate_systems, cfg: EvalConfig, shards: Path, backbones, seed: int, workdir: Path
) -> dict:
    """``candidate_systems``: (step, path, build) with build() -> System for that checkpoint."""
    val = items.split_pictures(shards, "val", cfg.unified_bench.resolution, limit=cfg.selection.images)
    val_items, files = items.reconstruction_items(val, seed, f"selection/{stage}")
    items_dir = workdir / "val_items"
    items.write(items_dir, val_items, files)
    rows = []
    for step, path, build in candidate_systems:
        system: System = build()
        folder = workdir / f"step_{step:08d}"
        generate_cfg = cfg
        records = []
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "images").mkdir(exist_ok=True)
        for item in val_items:
            records.extend(
                generate.reconstruct(
                    item, items_dir, system, generate_cfg, folder / "images", "unified_bench"
                )
            )
        for record in records:
            record["output"] = str(folder / record["output"])
        scored, summary = score.unified_bench(records, items_dir, backbones)
        (folder / "records.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in scored))
        value = (
            summary["overall"]
            if cfg.selection.metric == "overall"
            else summary["backbones"][cfg.selection.metric]["avg"]
        )
        rows.append({"step": step, "path": str(path), "metric": value, "scores": summary})
        log.info("%s step %d: %s = %.3f", stage, step, cfg.selection.metric, value)
    best = max(rows, key=lambda r: (r["metric"], r["step"]))
    return {
        "stage": stage,
        "metric": cfg.selection.metric,
        "split": "val",
        "images": len(val_items),
        "candidates": rows,
        "selected": best["path"],
        "selected_step": best["step"],
    }
