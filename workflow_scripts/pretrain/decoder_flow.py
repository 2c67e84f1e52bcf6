"""Stage 1b: flow-matching fine-tune of the decoder (projector + MMDiT) on (long caption, image) pairs.

Rectified-flow objective of SD3 (diffusers' SD3 training recipe): x_t = (1 - s) x_0 + s e with s from
the scheduler's shifted sigma table at a logit-normal timestep; the DiT predicts v = e - x_0. The
caption is read through the frozen encoder's LLM (models/conditioning.py, as ``models.decoder.conditioning``
says; in 'release' mode a micro-batch's captions are padded together), then the trained projector.

Both frozen models give the same tensors for a sample every time it is drawn, so with
``pretrain.decoder.cache`` they run once per phase over the training split (:class:`FrozenCache`); a step
then costs only the DiT and projector. With ``ema_decay`` the export is diffusers' EMAModel average of
the trained weights, kept as buffers of the trainable module so checkpoints carry it.

At the end of a phase :func:`caption_reliance` measures, on the val split, how much the exported decoder
reads its caption (flow-matching loss with the own, another image's and the empty caption); the figures
join the final row of the exported metrics log, whence the warehouse and the report's "Does it learn?"
table take them.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import (
    EMAModel,
    compute_density_for_timestep_sampling,
    compute_loss_weighting_for_sd3,
)

from workflow_scripts import atomic
from workflow_scripts.catalog import decoder_stage
from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.eval.learning import CAPTION_RELIANCE_SIGMAS as VAL_SIGMAS
from workflow_scripts.eval.learning import derangement
from workflow_scripts.harness.context import JobContext
from workflow_scripts.harness.device import job_device
from workflow_scripts.harness.stage import finalizer, identity, stage_paths
from workflow_scripts.models.conditioning import ConditioningSpec, condition, read
from workflow_scripts.models.config import DecoderModelConfig
from workflow_scripts.models.decoder import CaptionProjector, Decoder, export_decoder, load_decoder
from workflow_scripts.models.encoder import Encoder, load_encoder
from workflow_scripts.pretrain.config import DecoderPhaseConfig, DecoderPretrainConfig
from workflow_scripts.seeding import derive_seed, seed_everything
from workflow_scripts.train.batches import BatchPlan, Sample
from workflow_scripts.train.loop import train
from workflow_scripts.train.lora import add_lora
from workflow_scripts.train.metrics import read as read_metrics

log = logging.getLogger(__name__)


class DecoderTrainable(torch.nn.Module):
    """The parts that learn: projector (always) and DiT (full or LoRA), as one module for accelerate."""

    def __init__(self, projector: CaptionProjector, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.projector = projector
        self.transformer = transformer
        self.ema: EMAModel | None = None

    def trained(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def keep_ema(self, decay: float) -> None:
        """Track an EMA of the trained weights. Its shadow weights and update count are buffers of this
        module, so the engine's checkpoint saves them and a resumed run continues the same average."""
        params = self.trained()
        self.ema = EMAModel(params, decay=decay)
        holder = torch.nn.Module()
        for i, shadow in enumerate(self.ema.shadow_params):
            holder.register_buffer(f"w{i}", shadow)
        holder.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.ema_state = holder
        # EMAModel updates its shadow tensors in place: pointing it at the buffers keeps them one storage
        self.ema.shadow_params = [getattr(holder, f"w{i}") for i in range(len(params))]

    @torch.no_grad()
    def update_ema(self) -> None:
        self.ema.optimization_step = int(self.ema_state.updates)
        self.ema.step(self.trained())
        self.ema_state.updates.fill_(self.ema.optimization_step)

    def forward(self, noisy, timesteps, text_hidden, text_mask, pooled) -> torch.Tensor:
        prompt_embeds = self.projector(text_hidden, text_mask)
        return self.transformer(
            hidden_states=noisy,
            timestep=timesteps,
            encoder_hidden_states=prompt_embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]


@dataclass
class Batch:
    pixels: torch.Tensor | None  # (B, 3, R, R) in [-1, 1]; None when the frozen cache serves the batch
    captions: list[str] | None  # "" where the caption was dropped; None when the cache serves the batch
    samples: list[Sample]
    dropped: list[bool]  # caption replaced by the empty one (classifier-free guidance)


@dataclass
class FrozenCache:
    """What the frozen models give every training sample: VAE latents and the LLM's caption reading.

    Rows are the dataset's rows. Readings are stored up to the longest caption's tokens; the rest of the
    fixed_length window is zeros in the uncached reading too, so it is padded back when a batch is cut.
    """

    latents: torch.Tensor  # (N, C, h, w)
    hidden: torch.Tensor  # (N, T, H), T = longest caption's tokens
    keep: torch.Tensor  # (N, T)
    empty_hidden: torch.Tensor  # (1, T_empty, H): the dropped caption ""
    empty_keep: torch.Tensor
    width: int  # the fixed_length window (models.decoder.max_text_tokens)

    @classmethod
    @torch.no_grad()
    def build(cls, dataset, decoder: Decoder, encoder: Encoder, spec: ConditioningSpec, chunk: int = 64):
        if spec.mode != "fixed_length":
            raise ValueError(
                "pretrain.decoder.cache needs models.decoder.conditioning: fixed_length; in 'release' a "
                "caption's reading depends on the captions padded beside it. Set pretrain.decoder.cache: "
                "false or conditioning: fixed_length."
            )
        device = next(decoder.vae.parameters()).device
        latents, hidden, keep = [], [], []
        # fixed chunks in row order: a resumed run rebuilds the same numbers
        for start in range(0, len(dataset), chunk):
            records = [dataset[i] for i in range(start, min(start + chunk, len(dataset)))]
            pixels = torch.stack([_to_tensor(r.image) for r in records]).to(device)
            latents.append(decoder.to_latents(pixels))
            reading = read(encoder, [r.caption for r in records], spec)
            hidden.append(reading.hidden)
            keep.append(reading.keep)
        hidden, keep = torch.cat(hidden), torch.cat(keep)
        used = max(int(keep.sum(1).max()), 1)
        empty = read(encoder, [""], spec)
        empty_used = max(int(empty.keep.sum(1).max()), 1)
        return cls(
            latents=torch.cat(latents),
            hidden=hidden[:, :used].clone(),
            keep=keep[:, :used].clone(),
            empty_hidden=empty.hidden[:, :empty_used].clone(),
            empty_keep=empty.keep[:, :empty_used].clone(),
            width=spec.max_tokens,
        )

    def batch(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latents, reading, keep) of a batch, the reading padded back to the fixed_length window."""
        rows = torch.tensor([s.index for s in batch.samples])
        hidden, keep = [], []
        for row, dropped in zip(rows.tolist(), batch.dropped, strict=True):
            if dropped:
                h, k = self.empty_hidden[0], self.empty_keep[0]
            else:
                h, k = self.hidden[row], self.keep[row]
            pad = self.width - h.shape[0]
            hidden.append(torch.nn.functional.pad(h, (0, 0, 0, pad)))
            keep.append(torch.nn.functional.pad(k, (0, pad)))
        return self.latents[rows], torch.stack(hidden), torch.stack(keep)


@dataclass
class DecoderFlowMatching:
    cfg: DecoderPretrainConfig
    phase: DecoderPhaseConfig
    model_cfg: DecoderModelConfig
    encoder: Encoder  # frozen: its LLM reads the captions
    decoder: Decoder
    dataset: ShardDataset
    plan: BatchPlan
    seed: int
    start: Path  # the decoder directory this phase starts from
    name: str = "pretrain_decoder"

    def __post_init__(self) -> None:
        self.name = decoder_stage(self.phase.name)
        self.conditioning = ConditioningSpec.of(self.model_cfg)
        self.encoder.model.requires_grad_(False).eval()
        self.decoder.vae.requires_grad_(False).eval()
        self.train_scheduler = copy.deepcopy(self.decoder.scheduler)
        self.cache: FrozenCache | None = None
        if self.cfg.cache:
            self.cache = FrozenCache.build(self.dataset, self.decoder, self.encoder, self.conditioning)
        self.module: DecoderTrainable | None = None

    def trainable(self) -> torch.nn.Module:
        transformer = self.decoder.transformer
        if self.cfg.transformer == "lora":
            transformer.requires_grad_(False)
            transformer = add_lora(transformer, self.cfg.lora)
        self.decoder.projector.requires_grad_(True)
        self.module = DecoderTrainable(self.decoder.projector, transformer)
        if self.cfg.ema_decay > 0:
            self.module.keep_ema(self.cfg.ema_decay)
        return self.module

    def after_step(self, model: torch.nn.Module, step: int) -> None:
        if self.module is not None and self.module.ema is not None:
            self.module.update_ema()  # the wrapped model shares these parameters

    def micro_batches(self, step: int, rank: int, world: int) -> list[Batch]:
        batches = []
        for chunk in self.plan.micro_batches(step, rank, world):
            dropped = [
                _uniform(self.seed, "caption_dropout", s.position) < self.cfg.caption_dropout for s in chunk
            ]
            if self.cache is not None:
                batches.append(Batch(None, None, chunk, dropped))
                continue
            records = [self.dataset[s.index] for s in chunk]
            pixels = torch.stack([_to_tensor(r.image) for r in records])
            captions = ["" if d else r.caption for d, r in zip(dropped, records, strict=True)]
            batches.append(Batch(pixels, captions, chunk, dropped))
        return batches

    def frozen(self, batch: Batch, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latents, caption reading, keep mask) of a batch: from the cache, or computed now."""
        if self.cache is not None:
            return tuple(t.to(device) for t in self.cache.batch(batch))
        with torch.no_grad():
            latents = self.decoder.to_latents(batch.pixels.to(device))
            reading = read(self.encoder, batch.captions, self.conditioning)
        return latents, reading.hidden, reading.keep

    def loss(self, model: torch.nn.Module, batch: Batch, step: int):
        device = next(model.parameters()).device
        latents, text_hidden, text_mask = self.frozen(batch, device)
        # one generator per sample, keyed by its stream position: identical whatever the world size
        noise, indices = [], []
        steps = self.train_scheduler.config.num_train_timesteps
        for sample, latent in zip(batch.samples, latents, strict=True):
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "noise", sample.position))
            u = compute_density_for_timestep_sampling(
                self.cfg.weighting_scheme, 1, self.cfg.logit_mean, self.cfg.logit_std, generator=gen
            )
            indices.append(min(int(u.item() * steps), steps - 1))
            noise.append(torch.randn(latent.shape, generator=gen))
        noise = torch.stack(noise).to(device, latents.dtype)
        index = torch.tensor(indices)
        timesteps = self.train_scheduler.timesteps[index].to(device)
        sigmas = self.train_scheduler.sigmas[index].to(device, latents.dtype)
        per_sample = self.flow_loss(model, latents, noise, sigmas, timesteps, text_hidden, text_mask)
        return per_sample.mean(), {"sigma_mean": float(sigmas.mean())}

    def flow_loss(self, model, latents, noise, sigmas, timesteps, text_hidden, text_mask) -> torch.Tensor:
        """Per-sample weighted rectified-flow loss at the given noise levels (training and validation)."""
        sigmas = sigmas.view(-1, 1, 1, 1)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        pooled = self.decoder.pooled(len(latents)).to(latents.device)
        pred = model(noisy, timesteps, text_hidden, text_mask, pooled)
        weighting = compute_loss_weighting_for_sd3(self.cfg.weighting_scheme, sigmas)
        target = noise - latents
        return (weighting.float() * (pred.float() - target.float()) ** 2).flatten(1).mean(1)

    def export(self, model: torch.nn.Module, out_dir: Path, *, final: bool) -> None:
        """A self-contained decoder; LoRA checkpoints during training keep the adapter unmerged."""
        metadata = {
            "conditioning": self.model_cfg.conditioning,
            "conditioning_role": self.model_cfg.conditioning_role,
            "max_text_tokens": self.model_cfg.max_text_tokens,
            "llm_hidden_size": model.projector.config.in_features,
            "resolution": self.phase.resolution,
        }
        ema = getattr(model, "ema", None)
        if ema is not None:
            metadata["ema_decay"] = self.cfg.ema_decay
            metadata["ema_updates"] = int(model.ema_state.updates)
            ema.store(model.trained())
            ema.copy_to(model.trained())
        self.decoder.projector = model.projector
        export_decoder(
            self.decoder,
            model.transformer,
            out_dir,
            lora=self.cfg.transformer == "lora",
            final=final,
            start=self.start,
            metadata=metadata,
        )
        if ema is not None and not final:  # training goes on from its own weights; the final model is the EMA
            ema.restore(model.trained())


def _to_tensor(image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def _uniform(seed: int, *names: object) -> float:
    return np.random.default_rng(derive_seed(seed, *names)).random()


VAL_IMAGES = 64  # caps the paper preset's cost: 64 images x 4 noise levels x 3 captions = 768 DiT samples
VAL_CHUNK = 4  # images per forward (x 4 noise levels); paper-resolution activations stay small


@torch.no_grad()
def caption_reliance(task: DecoderFlowMatching, val) -> dict[str, float]:
    """How much the exported decoder reads its caption: the mean flow-matching loss on the first
    ``VAL_IMAGES`` validation records with each image's own caption, another image's caption
    (:func:`~workflow_scripts.eval.learning.derangement`) and the empty caption, at the fixed noise levels
    ``VAL_SIGMAS``. The three conditions share each image's seeded noise, so their difference is the
    caption's alone: a decoder that ignores its caption scores own = other = empty. Needs >= 2 records
    (else ``{}``).

    Uses the decoder's current projector and transformer (after the final export: the saved weights, the
    EMA where there is one). Captions are read as in training: a batch at a time in 'fixed_length', one
    at a time in 'release' (where a reading depends on the captions padded beside it).
    """
    count = min(len(val), VAL_IMAGES)
    if count < 2:
        log.warning("%s: %d validation image(s); the caption-reliance loss needs 2", task.name, count)
        return {}
    records = [val[i] for i in range(count)]
    own = [r.caption for r in records]
    captions = {"own": own, "other": [own[j] for j in derangement(count)], "empty": [""] * count}
    model = DecoderTrainable(task.decoder.projector, task.decoder.transformer).eval()
    device = next(task.decoder.transformer.parameters()).device
    steps = task.train_scheduler.config.num_train_timesteps
    levels = len(VAL_SIGMAS)
    chunk = 1 if task.conditioning.mode == "release" else VAL_CHUNK
    losses: dict[str, list[float]] = {name: [] for name in captions}
    for start in range(0, count, chunk):
        rows = range(start, min(start + chunk, count))
        pixels = torch.stack([_to_tensor(records[k].image) for k in rows]).to(device)
        latents = task.decoder.to_latents(pixels).repeat_interleave(levels, 0)
        noise = torch.cat(
            [
                torch.randn(
                    (levels, *latents.shape[1:]),
                    generator=torch.Generator().manual_seed(derive_seed(task.seed, "val_noise", k)),
                )
                for k in rows
            ]
        ).to(device, latents.dtype)
        sigmas = torch.tensor(VAL_SIGMAS * len(rows))
        timesteps = (sigmas * steps).to(device)
        sigmas = sigmas.to(device, latents.dtype)
        for name, texts in captions.items():
            reading = read(task.encoder, [texts[k] for k in rows], task.conditioning)
            hidden = reading.hidden.to(device).repeat_interleave(levels, 0)
            keep = reading.keep.to(device).repeat_interleave(levels, 0)
            per_sample = task.flow_loss(model, latents, noise, sigmas, timesteps, hidden, keep)
            losses[name] += per_sample.tolist()
    return {
        **{f"val_flow_loss_{name}": float(np.mean(values)) for name, values in losses.items()},
        "val_flow_images": count,
    }


def add_final_metrics(path: Path, values: dict[str, float]) -> None:
    """Merge ``values`` into the last (final-step) row of an exported metrics log, the row the warehouse
    reads a stage's final figures from (report/queries.py ``final_metrics``)."""
    rows = read_metrics(path)
    if not rows:
        raise ValueError(f"{path}: no metrics row to add the final validation figures to")
    rows[-1].update(values)
    atomic.write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def previews(task: DecoderFlowMatching, ctx: JobContext, out_dir: Path) -> None:
    """Draw a few validation captions with the just-trained decoder (sanity pictures for the report)."""
    count = task.cfg.previews
    if count <= 0:
        return
    val = ShardDataset(ctx.input("shards"), "val", task.phase.resolution)
    records = [val[i] for i in range(min(count, len(val)))]
    sampling = ctx.cfg.inference.image
    folder = out_dir / "previews"
    folder.mkdir()
    task.decoder.transformer.eval()
    seeds = [derive_seed(ctx.cfg.seed, "preview", r.image_id) for r in records]
    captions = [r.caption for r in records]
    # 'release' reads one caption at a time, as evaluation draws; 'fixed_length' is batch-independent
    groups = (
        [[i] for i in range(len(records))] if task.conditioning.mode == "release" else [range(len(records))]
    )
    pictures = []
    with torch.no_grad():
        for group in groups:
            embeds, negative = condition(
                task.encoder, task.decoder.projector, [captions[i] for i in group], task.conditioning
            )
            pictures += task.decoder.generate(
                embeds,
                negative,
                seeds=[seeds[i] for i in group],
                steps=sampling.steps,
                guidance_scale=sampling.guidance_scale,
                resolution=task.phase.resolution,
            )
    index = []
    for i, (record, picture, seed) in enumerate(zip(records, pictures, seeds, strict=True)):
        picture.save(folder / f"{i:03d}.png")
        record.image.save(folder / f"{i:03d}_original.png")
        index.append(
            {"file": f"{i:03d}.png", "image_id": record.image_id, "caption": record.caption, "seed": seed}
        )
    (folder / "index.json").write_text(json.dumps(index, indent=2))


def run(ctx: JobContext) -> dict:
    phase_name = ctx.spec.wildcards["phase"]
    cfg = ctx.cfg.pretrain.decoder
    (phase,) = [p for p in cfg.phases if p.name == phase_name]
    model_cfg = ctx.cfg.models.decoder
    seed = derive_seed(ctx.cfg.seed, "pretrain_decoder", phase.name)
    seed_everything(seed)
    device = job_device(ctx.local_rank)
    dtype = ctx.cfg.models.torch_dtype(device)
    encoder = load_encoder(ctx.input("encoder"), key="pretrain_encoder output", dtype=dtype)
    encoder.model.to(device)
    decoder = load_decoder(
        ctx.input("decoder"),
        llm_hidden_size=encoder.model.config.text_config.hidden_size,
        projector_hidden_size=model_cfg.projector_hidden_size,
        projector_merge=model_cfg.projector_merge,
        projector_seed=derive_seed(ctx.cfg.seed, "projector_init"),
    )
    decoder.vae.to(device)
    dataset = ShardDataset(ctx.input("shards"), "train", phase.resolution)
    plan = BatchPlan(len(dataset), phase.loop.batch_size, phase.loop.micro_batch_size, seed)
    task = DecoderFlowMatching(
        cfg, phase, model_cfg, encoder, decoder, dataset, plan, seed, ctx.input("decoder")
    )
    paths = stage_paths(ctx)
    run_identity = identity(ctx)
    record = finalizer(
        ctx, paths, run_identity, {"train_images": len(dataset), "resolution": phase.resolution}
    )

    reliance: dict[str, float] = {}

    def finalize(tmp: Path) -> None:
        reliance.update(caption_reliance(task, ShardDataset(ctx.input("shards"), "val", phase.resolution)))
        previews(task, ctx, tmp)
        record(tmp)
        if reliance:
            add_final_metrics(tmp / "metrics.jsonl", reliance)

    summary = train(task, phase.loop, paths, identity=run_identity, finalize=finalize)
    return {**summary, "train_images": len(dataset), **reliance}
