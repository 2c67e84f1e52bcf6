"""The reward-backbone training stage's entry (tiny preset): train one backbone, measure its room."""

from __future__ import annotations

import json
from pathlib import Path

from workflow_scripts import atomic
from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.harness.context import JobContext
from workflow_scripts.harness.stage import finalizer, identity, stage_paths
from workflow_scripts.reward.backbones import load_backbone
from workflow_scripts.reward.pixels import to_unit
from workflow_scripts.reward.training import BackboneTraining, ContrastiveObjective, separation
from workflow_scripts.seeding import derive_seed, seed_everything
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.loop import train

VALIDATION = "validation.json"  # the warehouse ingests it as the stage's val_* metrics


def train_backbone(ctx: JobContext) -> dict:
    cfg = ctx.cfg.reward_train
    name = ctx.spec.wildcards["backbone"]
    base = ctx.input("base")
    seed = cfg.seed  # not the run's: see RewardTrainConfig.seed
    seed_everything(derive_seed(seed, "reward_train", name))
    images = ShardDataset(ctx.input("shards"), "train", cfg.resolution)
    loop = cfg.loop
    plan = BatchPlan(
        len(images), loop.batch_size, loop.micro_batch_size, derive_seed(seed, "reward_train", name)
    )
    val = ShardDataset(ctx.input("shards"), "val", cfg.resolution)
    held_out = to_unit([val[i].image for i in range(len(val))])
    backbone = load_backbone(name, base)
    floor = separation(backbone, held_out)  # before training: the random build's room
    objective = ContrastiveObjective(backbone, cfg.temperature)
    task = BackboneTraining.on(base, objective, images, plan, cfg.view_blur)
    paths = stage_paths(ctx)
    run_identity = identity(ctx)

    def finalize(tmp: Path) -> None:
        trained = separation(load_backbone(name, tmp), held_out)
        figures = {"val_images": len(val), **trained, **{f"untrained_{k}": v for k, v in floor.items()}}
        atomic.write_json(tmp / VALIDATION, figures)
        finalizer(ctx, paths, run_identity, {**figures, "reward_train_seed": seed})(tmp)

    summary = train(task, loop, paths, identity=run_identity, finalize=finalize)
    return {**summary, "backbone": name, **json.loads((paths.final / VALIDATION).read_text())}
