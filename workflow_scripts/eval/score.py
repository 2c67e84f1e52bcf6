"""Scorers: per-sample scores on a benchmark's generated records, then the aggregates.

Scoring reads the shards' records and images only, so a changed scorer re-scores without regenerating.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from workflow_scripts.eval import geneval, geneval_pp, learning, mmt
from workflow_scripts.eval.geneval import ScoringConstants
from workflow_scripts.reward.functions import similarities, weighted
from workflow_scripts.reward.pixels import to_unit

if TYPE_CHECKING:  # its module imports torchvision (1.4 s): only Unified-Bench scoring loads backbones
    from workflow_scripts.reward.backbones import Backbone


def load_records(shard_dirs: list[Path]) -> list[dict]:
    records = []
    for folder in sorted(shard_dirs):
        for line in (folder / "records.jsonl").read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if "output" in record:
                    record["output"] = str(folder / record["output"])
                records.append(record)
    return sorted(records, key=lambda r: (r["item_id"], r.get("sample", 0), r.get("rotation", 0)))


def unified_bench(records: list[dict], items_dir: Path, backbones: dict[str, Backbone], batch: int = 16):
    """CLIP / LongCLIP / DINOv2 / DINOv3 cosine x 100 per image; Overall = mean of the backbones' averages."""
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        originals = to_unit([Image.open(items_dir / "images" / r["input"]).convert("RGB") for r in chunk])
        outputs = to_unit([Image.open(r["output"]).convert("RGB") for r in chunk])
        with torch.no_grad():
            sims = similarities(backbones, originals, outputs)
        for i, record in enumerate(chunk):
            for name, values in sims.items():
                record[name] = 100.0 * float(values[i])
    stats = {
        name: {
            "avg": float(np.mean([r[name] for r in records])),
            "min": float(np.min([r[name] for r in records])),
            "max": float(np.max([r[name] for r in records])),
        }
        for name in backbones
    }
    return records, {
        "backbones": stats,
        "overall": float(np.mean([s["avg"] for s in stats.values()])),
        "images": len(records),
    }


def reconstruction_reward(records: list[dict], alphas: dict[str, float]) -> dict:
    """The RL stages' reconstruction reward, sum_k alpha_k x cosine_k (x 100, as the backbone columns), of
    each scored record (``reward``) and the summary's part: its mean and the alphas, Stage 2a's and 2b's
    own objective on images they never trained on. ``alphas``: rl.rewards.reconstruction.alphas; where one
    names a backbone Unified-Bench did not score (eval.unified_bench.backbones leaves it out), the reward
    is not scored and the summary says why."""
    if not records:
        return {"reward_unscored": "no records"}
    missing = sorted(set(alphas) - set(records[0]))
    if missing:
        return {
            "reward_unscored": f"rl.rewards.reconstruction.alphas names {missing}, which "
            "eval.unified_bench.backbones does not score: add them there to score the RL reward on the "
            "bench split"
        }
    for record in records:
        record["reward"] = weighted(alphas, record)
    return {"reward": float(np.mean([r["reward"] for r in records])), "reward_alphas": dict(alphas)}


def generation(
    records: list[dict], detector, colors, constants: ScoringConstants, tasks
) -> tuple[list[dict], dict]:
    """GenEval's rules on every generated image; per-task accuracy and the mean over tasks, and beside
    them the floor (``learning.geneval_floor``: each image against another prompt of its task)."""
    floor_specs = learning.geneval_floor_specs(records)
    for record in records:
        image = Image.open(record["output"]).convert("RGB")
        metadata = json.loads(record["metadata"])
        found = detector(image)
        detections = geneval.keep(found, metadata["tag"], constants)
        correct, reasons = geneval.evaluate(
            metadata, detections, lambda cls, dets, im=image: colors(im, cls, dets)
        )
        record.update(
            correct=correct,
            reason="\n".join(reasons),
            prompt_id=record["item_id"],
            detections=json.dumps({c: [[*d.box, d.score] for d in ds] for c, ds in detections.items()}),
        )
        other = floor_specs.get(record["item_id"])
        record["floor_correct"] = None
        if other is not None:
            kept = geneval.keep(found, other["tag"], constants)
            record["floor_correct"], _ = geneval.evaluate(
                other, kept, lambda cls, dets, im=image: colors(im, cls, dets)
            )
    return records, {**geneval.summarize(records, tasks), "floor": learning.geneval_floor(records, tasks)}


def geneval_pp_verdicts(
    records: list[dict], bench_items: list[dict], judge, item_protocol: dict
) -> tuple[list[dict], dict]:
    """Every item judged on its image (an item without one is wrong, the judge is not asked); per-tag
    accuracy, Overall = their mean, and the protocol record naming the judge."""
    generated = {r["item_id"]: r for r in records}
    results = []
    for item in bench_items:
        record = generated.get(item["item_id"], {})
        verdict = geneval_pp.judge_item(judge, item, record.get("output"))
        results.append(
            {
                "item_id": item["item_id"],
                "line": item["line"],
                "tag": item["tag"],
                "prompt": item["prompt"],
                "metadata": json.dumps({k: item[k] for k in geneval_pp.LINE_KEYS if k in item}),
                "seed": item["seed"],
                "output": record.get("output"),
                **verdict,
                "replies": json.dumps(verdict["replies"]),
            }
        )
    summary = geneval_pp.summarize(results)
    return results, {**summary, "protocol": geneval_pp.score_protocol(item_protocol, judge.name)}


def multiple_choice(records: list[dict], circular: bool, judge=None) -> tuple[list[dict], dict]:
    return mmt.score(records, circular, judge)
