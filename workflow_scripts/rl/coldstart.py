"""Unified-GRPO step 1, cold start: the decoder learns to redraw each image from the encoder's own caption.

Loss = 1 - R(x, x') with R the alpha-weighted cosine similarity of the reward backbones' features. The
reconstruction x' is sampled from noise with the Euler ODE; gradients flow through the last
``grad_steps`` denoising steps (DRaFT-K, Clark et al. 2023), the VAE decoder and the frozen backbones,
into the projector and the DiT's LoRA. The encoder gets no gradient: its caption is a discrete sample,
and the LLM that reads captions for the decoder stays the pretrained one that RL's reference uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.models.decoder import CaptionProjector, Decoder, export_decoder
from workflow_scripts.models.encoder import Encoder
from workflow_scripts.reward.backbones import Backbone
from workflow_scripts.reward.functions import reconstruction_loss
from workflow_scripts.reward.pixels import to_unit
from workflow_scripts.rl.config import ColdStartConfig
from workflow_scripts.rl.flow import Schedule, initial_noise, sample
from workflow_scripts.seeding import derive_seed
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.lora import add_lora


class Redraw(torch.nn.Module):
    """Caption states + noise -> pixels, differentiable in the projector and the DiT (last K steps)."""

    def __init__(
        self,
        projector: CaptionProjector,
        transformer: torch.nn.Module,
        decoder: Decoder,
        schedule: Schedule,
        cfg: ColdStartConfig,
    ) -> None:
        super().__init__()
        self.projector = projector
        self.transformer = transformer
        self.vae = decoder.vae
        self._decoder = decoder
        self.schedule = schedule
        self.cfg = cfg

    def forward(self, hidden, mask, negative_hidden, negative_mask, noise) -> torch.Tensor:
        embeds = self.projector(hidden, mask)
        negative = self.projector(negative_hidden, negative_mask)
        pooled = self._decoder.pooled(len(noise)).to(embeds.device, embeds.dtype)
        traj = sample(
            self.transformer,
            embeds,
            negative,
            pooled,
            noise,
            self.schedule,
            guidance=self.cfg.guidance_scale,
            grad_from=self.schedule.steps - self.cfg.grad_steps,
        )
        return self._decoder.to_pixels(traj.latents[-1])


@dataclass
class ColdStart:
    cfg: ColdStartConfig
    encoder: Encoder  # frozen captioner and caption reader
    decoder: Decoder
    backbones: dict[str, Backbone]
    alphas: dict[str, float]
    dataset: ShardDataset
    plan: BatchPlan
    seed: int
    instruction: str
    role: str
    max_text_tokens: int
    start: Path
    metadata: dict
    name: str = "rl_coldstart"

    def trainable(self) -> torch.nn.Module:
        self.encoder.model.requires_grad_(False).eval()
        self.decoder.vae.requires_grad_(False)
        self.decoder.transformer.requires_grad_(False)
        self.transformer = add_lora(self.decoder.transformer, self.cfg.lora)
        self.decoder.projector.requires_grad_(True)
        self.captions: dict[int, str] = {}
        return Redraw(
            self.decoder.projector,
            self.transformer,
            self.decoder,
            Schedule.of(self.decoder.scheduler, self.cfg.sample_steps),
            self.cfg,
        )

    def _caption(self, index: int, image) -> str:
        if index not in self.captions:
            self.captions[index] = self.encoder.caption(
                [image],
                self.instruction,
                temperature=self.cfg.caption_temperature,
                max_new_tokens=self.max_text_tokens,
                generator_seed=derive_seed(self.seed, "caption", index),
            )[0]
        return self.captions[index]

    def micro_batches(self, step: int, rank: int, world: int) -> list[dict]:
        batches = []
        for chunk in self.plan.micro_batches(step, rank, world):
            records = [self.dataset[s.index] for s in chunk]
            captions = [self._caption(s.index, r.image) for s, r in zip(chunk, records, strict=True)]
            with torch.no_grad():
                hidden, mask = self.encoder.text_states(captions, self.role, self.max_text_tokens)
                negative = self.encoder.text_states([""], self.role, self.max_text_tokens)
            noise, _ = initial_noise(
                self.decoder.latent_shape(self.cfg.resolution),
                [derive_seed(self.seed, "noise", s.position) for s in chunk],
            )
            batches.append(
                {
                    "hidden": hidden,
                    "mask": mask,
                    "negative": negative,
                    "noise": noise,
                    "originals": to_unit([r.image for r in records]),
                }
            )
        return batches

    def loss(self, model, batch: dict, step: int):
        pixels = model(batch["hidden"], batch["mask"], *batch["negative"], batch["noise"])
        return reconstruction_loss(self.backbones, self.alphas, batch["originals"].to(pixels.device), pixels)

    def export(self, model, out_dir: Path, *, final: bool) -> None:
        self.decoder.projector = model.projector
        export_decoder(
            self.decoder,
            model.transformer,
            out_dir,
            lora=True,
            final=final,
            start=self.start,
            metadata=self.metadata,
        )
