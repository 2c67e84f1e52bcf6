"""Stage entries of Unified-GRPO: cold start, 2a, 2b, and the ablation variants' manifests."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from workflow_scripts import atomic
from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.harness.context import JobContext
from workflow_scripts.harness.device import job_device
from workflow_scripts.harness.stage import finalizer, identity, stage_paths
from workflow_scripts.seeding import derive_seed, seed_everything
from workflow_scripts.train.batches import BatchPlan

# The model stack (torch, transformers, diffusers, peft: seconds of import) is imported inside the
# functions of the training entries: a variant's record (rl_variant) needs none of it
# (tests/test_job_overhead.py).
if TYPE_CHECKING:
    from workflow_scripts.reward.functions import RewardModel

log = logging.getLogger(__name__)


def _backbones(ctx: JobContext, names, device):
    from workflow_scripts.reward.backbones import load_backbones, reward_backbone_inputs

    dtype = ctx.cfg.models.torch_dtype(device)
    return load_backbones(reward_backbone_inputs(ctx.spec.inputs), names, dtype, device)


def _reward(ctx: JobContext, device) -> RewardModel:
    from workflow_scripts.reward.functions import RewardModel

    rewards = ctx.cfg.rl.rewards
    names = list(rewards.reconstruction.alphas) if rewards.reconstruction.weight else []
    return RewardModel(rewards, _backbones(ctx, names, device))


def _decoder_metadata(decoder_dir: Path, resolution: int) -> dict:
    from workflow_scripts.models.decoder import FORMAT_FILE

    meta = json.loads((decoder_dir / FORMAT_FILE).read_text())
    keep = ("conditioning_role", "max_text_tokens", "llm_hidden_size")
    return {**{k: meta[k] for k in keep}, "resolution": resolution}


def _run(ctx: JobContext, task, loop, dataset: ShardDataset) -> dict:
    from workflow_scripts.train.loop import train

    paths = stage_paths(ctx)
    run_identity = identity(ctx)
    summary = train(
        task,
        loop,
        paths,
        identity=run_identity,
        finalize=finalizer(ctx, paths, run_identity, {"rl_images": len(dataset)}),
    )
    return {**summary, "rl_images": len(dataset)}


def _common(ctx: JobContext, stage: str, resolution: int, loop):
    from workflow_scripts.models.conditioning import ConditioningSpec
    from workflow_scripts.models.encoder import CaptionPrompt

    seed = derive_seed(ctx.cfg.seed, stage)
    seed_everything(seed)
    dataset = ShardDataset(ctx.input("rl_data"), "rl", resolution)
    plan = BatchPlan(len(dataset), loop.batch_size, loop.micro_batch_size, seed)
    reading = ctx.cfg.models.decoder
    return (
        seed,
        dataset,
        plan,
        {
            "conditioning": ConditioningSpec.of(reading),
            "max_text_tokens": reading.max_text_tokens,
            "instruction": CaptionPrompt.of(ctx.cfg.inference.caption),
        },
    )


def coldstart(ctx: JobContext) -> dict:
    from workflow_scripts.models.decoder import load_decoder
    from workflow_scripts.models.encoder import load_encoder
    from workflow_scripts.rl.coldstart import ColdStart

    cfg = ctx.cfg.rl.coldstart
    device = job_device(ctx.local_rank)
    seed, dataset, plan, reading = _common(ctx, "rl_coldstart", cfg.resolution, cfg.loop)
    dtype = ctx.cfg.models.torch_dtype(device)
    encoder = load_encoder(ctx.input("encoder"), dtype=dtype)
    encoder.model.to(device)
    decoder = load_decoder(ctx.input("decoder"))
    decoder.vae.to(device, dtype)
    alphas = dict(cfg.alphas)
    task = ColdStart(
        cfg,
        encoder,
        decoder,
        _backbones(ctx, list(alphas), device),
        alphas,
        dataset,
        plan,
        seed,
        start=ctx.input("decoder"),
        metadata=_decoder_metadata(ctx.input("decoder"), cfg.resolution),
        encoder_start=ctx.input("encoder"),
        **reading,
    )
    return _run(ctx, task, cfg.loop, dataset)


def encoder(ctx: JobContext) -> dict:
    from workflow_scripts.models.decoder import load_decoder
    from workflow_scripts.models.encoder import load_encoder
    from workflow_scripts.rl.common import SampleWriter
    from workflow_scripts.rl.encoder_rl import EncoderGRPO

    cfg = ctx.cfg.rl.encoder
    device = job_device(ctx.local_rank)
    seed, dataset, plan, reading = _common(ctx, "rl_encoder", cfg.resolution, cfg.loop)
    dtype = ctx.cfg.models.torch_dtype(device)
    policy = load_encoder(ctx.input("encoder"), dtype=dtype)
    decoder = load_decoder(ctx.input("decoder"), dtype=dtype)
    for part in (decoder.transformer, decoder.vae, decoder.projector):
        part.to(device).requires_grad_(False).eval()
    samples = SampleWriter(stage_paths(ctx).checkpoints.parent / "samples", cfg.grpo, enabled=ctx.rank == 0)
    task = EncoderGRPO(
        cfg,
        policy,
        decoder,
        _reward(ctx, device),
        dataset,
        plan,
        seed,
        samples=samples,
        start=ctx.input("encoder"),
        reader=ctx.cfg.rl.reader,
        **reading,
    )
    return _run(ctx, task, cfg.loop, dataset)


def decoder(ctx: JobContext) -> dict:
    from workflow_scripts.models.decoder import load_decoder
    from workflow_scripts.models.encoder import load_encoder
    from workflow_scripts.rl.common import SampleWriter
    from workflow_scripts.rl.decoder_rl import DecoderGRPO, caption_store

    cfg = ctx.cfg.rl.decoder
    device = job_device(ctx.local_rank)
    seed, dataset, plan, reading = _common(
        ctx, f"rl_decoder_{ctx.spec.wildcards['variant']}", cfg.resolution, cfg.loop
    )
    dtype = ctx.cfg.models.torch_dtype(device)
    captioner = load_encoder(ctx.input("captioner"), dtype=dtype)
    same = ctx.input("captioner").resolve() == ctx.input("text_encoder").resolve()
    text_encoder = captioner if same else load_encoder(ctx.input("text_encoder"), dtype=dtype)
    for model in {id(captioner): captioner, id(text_encoder): text_encoder}.values():
        model.model.to(device).requires_grad_(False).eval()
    decoder = load_decoder(ctx.input("decoder"), dtype=dtype)
    decoder.vae.to(device).requires_grad_(False)
    decoder.projector.to(device)
    samples = SampleWriter(stage_paths(ctx).checkpoints.parent / "samples", cfg.grpo, enabled=ctx.rank == 0)
    task = DecoderGRPO(
        cfg,
        captioner,
        text_encoder,
        decoder,
        _reward(ctx, device),
        dataset,
        plan,
        seed,
        samples=samples,
        start=ctx.input("decoder"),
        metadata=_decoder_metadata(ctx.input("decoder"), cfg.resolution),
        store=caption_store(
            stage_paths(ctx).checkpoints.parent,
            ctx.input("captioner"),
            cfg,
            reading["instruction"],
            reading["max_text_tokens"],
        ),
        **reading,
    )
    task.name = f"rl_decoder_{ctx.spec.wildcards['variant']}"
    return _run(ctx, task, cfg.loop, dataset)


def protocol(rl, variant: str) -> dict[str, str]:
    """How a variant was built, for the report: which LLM reads its prompts (``rl.reader``) and how its
    cold start trained (``rl.coldstart.mode``; 'none' when the variant has no cold start)."""
    cold = rl.coldstart.enabled and variant != "none"
    return {
        "reader": "captioner" if variant == "none" else rl.reader,
        "coldstart": rl.coldstart.mode if cold else "none",
    }


def variant(ctx: JobContext) -> dict:
    """Record which captioner, caption reader (the decoder's LLM) and decoder make up an ablation variant."""
    name = ctx.spec.wildcards["variant"]
    record = {
        "variant": name,
        "captioner": str(ctx.input("captioner")),
        "text_encoder": str(ctx.input("text_encoder")),
        "decoder": str(ctx.input("decoder")),
        "protocol": {**protocol(ctx.cfg.rl, name), "conditioning": ctx.cfg.models.decoder.conditioning},
        "selections": {
            k.removeprefix("selection_"): v for k, v in ctx.spec.inputs.items() if k.startswith("selection_")
        },
        "config_hash": ctx.config_hash,
    }
    atomic.write_json(ctx.output("variant"), record)
    return record
