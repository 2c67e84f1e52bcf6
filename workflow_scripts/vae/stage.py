"""The tiny VAE stage's entry: train the decoder base's autoencoder, export the base with it."""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL

from workflow_scripts import atomic
from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.harness.context import JobContext
from workflow_scripts.harness.stage import finalizer, identity, stage_paths
from workflow_scripts.seeding import derive_seed, seed_everything
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.loop import train
from workflow_scripts.vae.training import VAETraining, reconstruction_quality


def train_vae(ctx: JobContext) -> dict:
    cfg = ctx.cfg.vae
    base = ctx.input("decoder")
    seed_everything(derive_seed(ctx.cfg.seed, "vae_train", "init"))
    vae = AutoencoderKL.from_pretrained(base / "vae")
    images = ShardDataset(ctx.input("shards"), "train", cfg.resolution)
    loop = cfg.loop
    plan = BatchPlan(
        len(images), loop.batch_size, loop.micro_batch_size, derive_seed(ctx.cfg.seed, "vae_train")
    )
    task = VAETraining(base, vae, images, plan, cfg.kl_weight)
    paths = stage_paths(ctx)
    run_identity = identity(ctx)

    def finalize(tmp: Path) -> None:
        trained = AutoencoderKL.from_pretrained(tmp / "vae")
        quality = reconstruction_quality(trained, ctx.input("shards"), cfg.resolution, tmp)
        atomic.write_json(tmp / "reconstruction.json", quality)
        finalizer(ctx, paths, run_identity, quality)(tmp)

    summary = train(task, loop, paths, identity=run_identity, finalize=finalize)
    return {**summary, **json.loads((paths.final / "reconstruction.json").read_text())}
