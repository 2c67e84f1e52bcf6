"""Stage 1a: supervised fine-tuning of Qwen2.5-VL on (image, long caption) pairs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.harness.context import JobContext
from workflow_scripts.harness.stage import finalizer, identity, stage_paths
from workflow_scripts.models.encoder import CaptionPrompt, Encoder, export_encoder, load_encoder
from workflow_scripts.pretrain.config import EncoderSFTConfig
from workflow_scripts.seeding import derive_seed, seed_everything
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.loop import train
from workflow_scripts.train.lora import add_lora

log = logging.getLogger(__name__)


@dataclass
class EncoderSFT:
    """Loss on the caption tokens (and the end-of-turn) only; the prompt and image tokens are context."""

    cfg: EncoderSFTConfig
    encoder: Encoder
    dataset: ShardDataset
    instruction: CaptionPrompt
    plan: BatchPlan
    start: Path
    name: str = "pretrain_encoder"

    def trainable(self) -> torch.nn.Module:
        model = self.encoder.model
        model.requires_grad_(False)
        if self.cfg.method == "lora":
            model = add_lora(model, self.cfg.lora, scope="language_model")
        else:
            model.model.language_model.requires_grad_(True)
            model.lm_head.requires_grad_(True)
            if self.cfg.train_vision_tower:
                model.model.visual.requires_grad_(True)
        self.encoder.model = model
        return model

    def micro_batches(self, step: int, rank: int, world: int) -> list[dict[str, torch.Tensor]]:
        batches = []
        for chunk in self.plan.micro_batches(step, rank, world):
            records = [self.dataset[s.index] for s in chunk]
            batches.append(
                self.encoder.sft_batch(
                    [r.image for r in records],
                    [r.caption for r in records],
                    self.instruction,
                    self.cfg.max_caption_tokens,
                )
            )
        return batches

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], step: int):
        device = next(model.parameters()).device
        out = model(**{k: v.to(device) for k, v in batch.items()})
        tokens = int((batch["labels"] != -100).sum())
        return out.loss, {"caption_tokens": tokens}

    def export(self, model: torch.nn.Module, out_dir: Path, *, final: bool) -> None:
        export_encoder(
            model,
            self.encoder.processor,
            out_dir,
            lora=self.cfg.method == "lora",
            final=final,
            start=self.start,
        )


def run(ctx: JobContext) -> dict:
    cfg = ctx.cfg.pretrain.encoder
    seed_everything(derive_seed(ctx.cfg.seed, "pretrain_encoder", "init"))
    encoder = load_encoder(ctx.input("base"))
    dataset = ShardDataset(ctx.input("shards"), "train", cfg.resolution)
    plan = BatchPlan(
        len(dataset),
        cfg.loop.batch_size,
        cfg.loop.micro_batch_size,
        derive_seed(ctx.cfg.seed, "pretrain_encoder"),
    )
    prompt = CaptionPrompt.of(ctx.cfg.inference.caption)  # the turn evaluation and RL caption with
    task = EncoderSFT(cfg, encoder, dataset, prompt, plan, ctx.input("base"))
    paths = stage_paths(ctx)
    run_identity = identity(ctx)
    summary = train(
        task,
        cfg.loop,
        paths,
        identity=run_identity,
        finalize=finalizer(ctx, paths, run_identity, {"train_images": len(dataset)}),
    )
    return {**summary, "train_images": len(dataset)}
