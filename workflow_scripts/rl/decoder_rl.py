"""Stage 2b, understanding for generation: Flow-GRPO on the DiT's LoRA with the reconstruction reward.

The frozen encoder writes one caption per image; the policy draws G images from different noise with the
SDE sampler (each denoising step a Gaussian with a known log-probability); every step of every rollout is
a GRPO sample with the image's group-relative advantage, and a KL to the adapter-disabled reference.

A caption depends only on its image and its seed, so the captions of every image the run will use are
written before the first rollout, in batches of ``caption_batch_size`` shared out over the processes,
and kept in the stage's work directory (``CaptionStore``) for a resumed job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.models.conditioning import ConditioningSpec, condition
from workflow_scripts.models.decoder import Decoder, export_decoder
from workflow_scripts.models.encoder import CaptionPrompt, Encoder
from workflow_scripts.reward.functions import RewardInputs, RewardModel
from workflow_scripts.reward.pixels import to_pil, to_unit
from workflow_scripts.rl import grpo
from workflow_scripts.rl.common import (
    CaptionStore,
    Cycles,
    SampleWriter,
    gather,
    gather_objects,
    reward_stats,
)
from workflow_scripts.rl.config import DecoderRLConfig
from workflow_scripts.rl.flow import Schedule, cfg_velocity, initial_noise, sample
from workflow_scripts.seeding import derive_seed
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.lora import add_lora

log = logging.getLogger(__name__)


@dataclass
class FlowStep:
    """One micro-batch: one denoising step of the rollouts of some captions (G images each)."""

    index: int  # step i of the schedule: x_i -> x_{i+1}
    x: torch.Tensor
    x_next: torch.Tensor
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor  # read with the captions (release conditioning pads them together)
    advantages: torch.Tensor
    stats: dict[str, float]
    old_logp: torch.Tensor | None = field(default=None, repr=False)


@dataclass
class DecoderGRPO:
    cfg: DecoderRLConfig
    captioner: Encoder  # frozen: one caption per image
    text_encoder: Encoder  # frozen: the LLM the decoder reads captions with (rl.reader: the captioner)
    decoder: Decoder
    reward: RewardModel
    dataset: ShardDataset
    plan: BatchPlan
    seed: int
    instruction: CaptionPrompt
    conditioning: ConditioningSpec
    max_text_tokens: int
    samples: SampleWriter
    start: Path
    metadata: dict
    name: str = "rl_decoder"
    store: CaptionStore | None = None  # None: captions are kept in memory only

    def trainable(self) -> torch.nn.Module:
        self.decoder.transformer.requires_grad_(False)
        self.decoder.projector.requires_grad_(False)
        self.policy = add_lora(self.decoder.transformer, self.cfg.lora)
        self.cycles = Cycles(self.cfg.grpo)
        self.schedule = Schedule.of(self.decoder.scheduler, self.cfg.train_steps)
        self.trained_steps = max(1, int(self.schedule.steps * self.cfg.train_timestep_fraction))
        self.captions: dict[int, str] = {}
        return self.policy

    def micro_batches(self, step: int, rank: int, world: int) -> list[FlowStep]:
        return self.cycles.get(step, lambda s: self._rollout(s, rank, world))

    def _indices(self, start: int, stop: int) -> list[int]:
        """Dataset rows of steps [start, stop) over all processes, each once, in order of first use."""
        rows: dict[int, None] = {}
        for position in range(start * self.plan.batch_size, stop * self.plan.batch_size):
            rows.setdefault(self.plan.index(position), None)
            if len(rows) == self.plan.num_samples:
                break
        return list(rows)

    def caption_seed(self, index: int) -> int:
        return derive_seed(self.seed, "caption", index)

    @torch.no_grad()
    def prepare_captions(self, step: int, rank: int, world: int) -> None:
        """Caption every image the run uses from ``step`` on that has no caption yet: those in the store,
        then the rest in batches, each process captioning every world-th of them (all processes call
        this at the same step; they end with the same captions)."""
        stop = max(step + 1, self.cfg.loop.steps)
        wanted = [i for i in self._indices(step, stop) if i not in self.captions]
        if not wanted:
            return
        stored = self.store.load() if self.store else {}
        keys = {i: (self.dataset[i].image_id, self.caption_seed(i)) for i in wanted}
        missing = []
        for index, key in keys.items():
            if key in stored:
                self.captions[index] = stored[key]
            else:
                missing.append(index)
        mine, size = missing[rank::world], self.cfg.caption_batch_size
        written = []
        for first in range(0, len(mine), size):
            batch = mine[first : first + size]
            texts = self.captioner.caption(
                [self.dataset[i].image for i in batch],
                self.instruction,
                temperature=self.cfg.caption_temperature,
                max_new_tokens=self.max_text_tokens,
                generator_seed=[self.caption_seed(i) for i in batch],
            )
            written += zip(batch, texts, strict=True)
        written = gather_objects(written)
        for index, text in written:
            self.captions[index] = text
            stored[keys[index]] = text
        if written and self.store and rank == 0:
            self.store.save(stored)
        log.info(
            "%s: %d captions from the store, %d written in batches of %d",
            self.name,
            len(wanted) - len(missing),
            len(missing),
            size,
        )

    @torch.no_grad()
    def _rollout(self, step: int, rank: int, world: int) -> list[FlowStep]:
        G = self.cfg.grpo.group_size
        if any(i not in self.captions for i in self._indices(step, step + 1)):
            self.prepare_captions(step, rank, world)  # the first rollout of this process (or past loop.steps)
        self.policy.eval()
        chunks = self.plan.micro_batches(step, rank, world)
        rollouts = []
        for chunk in chunks:
            for s in chunk:
                record = self.dataset[s.index]
                caption = self.captions[s.index]
                embeds, negative = condition(
                    self.text_encoder, self.decoder.projector, [caption], self.conditioning
                )
                seeds = [derive_seed(self.seed, "images", s.position, g) for g in range(G)]
                noise, generators = initial_noise(self.decoder.latent_shape(self.cfg.resolution), seeds)
                pooled = self.decoder.pooled(G).to(embeds.device, embeds.dtype)
                traj = sample(
                    self.policy,
                    embeds.expand(G, -1, -1),
                    negative,
                    pooled,
                    noise,
                    self.schedule,
                    guidance=self.cfg.guidance_scale,
                    noise_level=self.cfg.noise_level,
                    generators=generators,
                )
                images = self.decoder.to_pixels(traj.latents[-1])
                rewards, terms = self.reward(RewardInputs(to_unit([record.image] * G), images, [caption] * G))
                rollouts.append(
                    {
                        "record": record,
                        "caption": caption,
                        "embeds": embeds,
                        "negative": negative,
                        "traj": traj,
                        "images": images,
                        "rewards": rewards,
                        "terms": terms,
                    }
                )
        rewards = torch.cat([r["rewards"] for r in rollouts])
        advantages = grpo.group_advantages(
            rewards,
            G,
            std=self.cfg.grpo.std,
            scale=self.cfg.grpo.scale,
            eps=self.cfg.grpo.advantage_epsilon,
            batch_rewards=gather(rewards),
        )
        terms = {k: torch.cat([r["terms"][k] for r in rollouts]) for k in rollouts[0]["terms"]}
        stats = reward_stats(rewards, terms, advantages)
        if rank == 0:
            self.samples.maybe_write(
                step,
                [r["record"].image for r in rollouts],
                [r["caption"] for r in rollouts],
                [to_pil(r["images"][:1])[0] for r in rollouts],
                [float(r["rewards"][0]) for r in rollouts],
            )
        steps, offset = [], 0
        per_chunk = [len(c) for c in chunks]
        for count in per_chunk:
            part = rollouts[offset : offset + count]
            adv = advantages[offset * G : (offset + count) * G]
            embeds = _padded_cat([r["embeds"].expand(G, -1, -1) for r in part])
            negative = _padded_cat([r["negative"].expand(G, -1, -1) for r in part])
            for i in range(self.trained_steps):
                x = torch.cat([r["traj"].latents[i] for r in part])
                x_next = torch.cat([r["traj"].latents[i + 1] for r in part])
                steps.append(FlowStep(i, x, x_next, embeds, negative, adv, stats))
            offset += count
        self.policy.train()
        return steps

    def _mean(self, transformer, batch: FlowStep):
        i = batch.index
        sigma, sigma_next = self.schedule.sigmas[i], self.schedule.sigmas[i + 1]
        device = batch.prompt_embeds.device
        pooled = self.decoder.pooled(len(batch.x)).to(device, batch.prompt_embeds.dtype)
        v = cfg_velocity(
            transformer,
            batch.x.to(device, batch.prompt_embeds.dtype),
            self.schedule.timesteps[i],
            batch.prompt_embeds,
            batch.negative_embeds,
            pooled,
            self.cfg.guidance_scale,
        )
        s = grpo.sde_std(sigma, float(self.schedule.sigmas[1]), self.cfg.noise_level).to(device)
        return (
            grpo.sde_mean(batch.x.to(device), v, sigma.to(device), sigma_next.to(device), s),
            s,
            sigma,
            sigma_next,
        )

    def loss(self, model, batch: FlowStep, step: int):
        mean, s, sigma, sigma_next = self._mean(model, batch)
        x_next = batch.x_next.to(mean.device)
        logp = grpo.gaussian_logprob(x_next, mean, s * torch.sqrt(sigma - sigma_next).to(mean.device))
        if step % self.cfg.grpo.inner_iterations == 0:
            batch.old_logp = logp.detach()  # the sampling policy: rho = 1 on the first inner iteration
        with torch.no_grad(), self.policy.disable_adapter():
            ref_mean, _, _, _ = self._mean(self.policy, batch)
        kl = grpo.flow_kl(mean, ref_mean, s).mean()
        policy_loss, clipped = grpo.flow_policy_loss(
            logp,
            batch.old_logp,
            batch.advantages.to(logp.device),
            epsilon=self.cfg.grpo.clip_epsilon,
            advantage_clip=self.cfg.advantage_clip,
        )
        return policy_loss + self.cfg.grpo.beta * kl, {
            "kl": float(kl),
            "clip_fraction": clipped,
            **batch.stats,
        }

    def export(self, model, out_dir: Path, *, final: bool) -> None:
        export_decoder(
            self.decoder, model, out_dir, lora=True, final=final, start=self.start, metadata=self.metadata
        )


def caption_store(
    folder: Path,
    captioner: Path,
    cfg: DecoderRLConfig,
    instruction: CaptionPrompt,
    max_text_tokens: int,
) -> CaptionStore:
    """The stage's caption store (``folder/captions.json``), its entries keyed by the captioner's
    directory contents and everything else the sampling reads."""
    from workflow_scripts.config.loader import digest
    from workflow_scripts.fingerprint import fingerprint

    identity = {
        "captioner": fingerprint(captioner),
        "instruction": [instruction.instruction, instruction.instruction_first],
        "temperature": cfg.caption_temperature,
        "max_new_tokens": max_text_tokens,
    }
    return CaptionStore(folder / "captions.json", digest(identity))


def _padded_cat(embeds: list[torch.Tensor]) -> torch.Tensor:
    """Rows of several captions in one micro-batch, zero-padded to the longest (release conditioning gives
    each caption its own length; with one caption per micro-batch nothing is padded)."""
    width = max(e.shape[1] for e in embeds)
    return torch.cat([torch.nn.functional.pad(e, (0, 0, 0, width - e.shape[1])) for e in embeds])
