"""Unified-GRPO step 1, cold start: a semantic reconstruction loss initialises the decoder (and the encoder).

Loss = 1 - R(x, x') with R the alpha-weighted cosine similarity of the reward backbones' features. The
reconstruction x' is sampled from noise with the Euler ODE; gradients flow through the last
``grad_steps`` denoising steps (DRaFT-K, Clark et al. 2023), the VAE decoder and the frozen backbones,
into the projector and the DiT's LoRA, and through the conditioning into the encoder:

- ``mode: hidden_states`` (the release's training module): the encoder's LLM reads the whole sample,
  image + instruction + caption answer, teacher-forced (``Encoder.sft_batch``); the last hidden states of
  the answer tokens (labels != -100) pass the projector and become ``prompt_embeds``; the negative is the
  projected negative prompt through the same LLM (``models/conditioning.py``'s tokens, right-padded with
  the pad token as the release's batch pads it), cut to the positive length. The LLM's LoRA trains with
  the projector and the DiT's LoRA. The export holds both models in one directory: the encoder's files
  (``config.json`` + weights, or ``adapter/`` + ``uae_encoder.json``) beside the decoder's subfolders, so
  the directory loads with ``load_encoder`` and ``load_decoder`` alike.
- ``mode: caption_text``: the caption is re-read as a text turn by the frozen LLM
  (``models/conditioning.py``); the encoder gets no gradient (its caption is a discrete sample).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.models.conditioning import ConditioningSpec, read, token_ids
from workflow_scripts.models.decoder import CaptionProjector, Decoder, export_decoder
from workflow_scripts.models.encoder import IGNORE_INDEX, CaptionPrompt, Encoder, export_encoder
from workflow_scripts.reward.backbones import Backbone
from workflow_scripts.reward.functions import reconstruction_loss
from workflow_scripts.reward.pixels import to_unit
from workflow_scripts.rl.config import ColdStartConfig
from workflow_scripts.rl.flow import Schedule, initial_noise, sample
from workflow_scripts.seeding import derive_seed
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.lora import add_lora

SAMPLE_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


def answer_states(llm: torch.nn.Module, sample: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states of each row's answer tokens (labels != -100), read with the image in context:
    (B, T, H) left-aligned and right-padded with zeros, and their mask (B, T); T = the longest answer."""
    device = next(llm.parameters()).device
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    hidden = base.model(**{k: sample[k].to(device) for k in SAMPLE_KEYS if k in sample}).last_hidden_state
    answer = (sample["labels"] != IGNORE_INDEX).to(device)
    rows = [h[a] for h, a in zip(hidden, answer, strict=True)]
    states = pad_sequence(rows, batch_first=True)
    mask = pad_sequence([torch.ones(len(r), dtype=torch.long, device=device) for r in rows], batch_first=True)
    return states, mask


def negative_states(
    reader: Encoder, spec: ConditioningSpec, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The negative prompt's states (1, length, H) and the positions the projector keeps, cut to the
    positive's ``length``. In 'release' conditioning the release's training batch holds the negative as
    its last row, right-padded with the pad token to the batch's width, attention mask ids != pad, and
    nothing zeroed; 'fixed_length' reads it as every prompt (padded to max_tokens, zeroed)."""
    ids, mask = token_ids(reader, [spec.negative], spec)
    if ids.shape[1] < length:
        pad = reader.tokenizer.pad_token_id
        ids = torch.nn.functional.pad(ids, (0, length - ids.shape[1]), value=pad)
        mask = torch.nn.functional.pad(mask, (0, length - mask.shape[1]))
    ids, mask = ids[:, :length], mask[:, :length]
    device = next(reader.model.parameters()).device
    base = reader.model.get_base_model() if hasattr(reader.model, "get_base_model") else reader.model
    hidden = base.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    if spec.mode == "release":
        return hidden, torch.ones_like(mask, device=device)
    mask = mask.to(device)
    return hidden * mask[..., None].to(hidden.dtype), mask


class Redraw(torch.nn.Module):
    """Conditioning + noise -> pixels, differentiable in the projector, the DiT (last K steps) and, with
    ``llm`` (hidden_states mode), the encoder's LLM."""

    def __init__(
        self,
        projector: CaptionProjector,
        transformer: torch.nn.Module,
        decoder: Decoder,
        schedule: Schedule,
        cfg: ColdStartConfig,
        llm: torch.nn.Module | None = None,
        negative=None,
    ) -> None:
        super().__init__()
        self.projector = projector
        self.transformer = transformer
        self.llm = llm
        self.vae = decoder.vae
        self._decoder = decoder
        self._negative = negative  # length -> (hidden, keep) of the negative prompt through llm
        self.schedule = schedule
        self.cfg = cfg

    def conditioning(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds, negative_prompt_embeds) of a micro-batch."""
        dtype = self.projector.dtype
        if self.llm is None:
            hidden, mask = batch["hidden"], batch["mask"]
            negative_hidden, negative_mask = batch["negative"]
        else:
            hidden, mask = answer_states(self.llm, batch["sample"])
            negative_hidden, negative_mask = self._negative(hidden.shape[1])
        device = self.projector.device
        embeds = self.projector(hidden.to(device, dtype), mask.to(device))
        negative = self.projector(negative_hidden.to(device, dtype), negative_mask.to(device))
        return embeds, negative

    def forward(self, batch: dict) -> torch.Tensor:
        embeds, negative = self.conditioning(batch)
        noise = batch["noise"]
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
    encoder: Encoder  # captioner; in hidden_states mode also trained, else the frozen caption reader
    decoder: Decoder
    backbones: dict[str, Backbone]
    alphas: dict[str, float]
    dataset: ShardDataset
    plan: BatchPlan
    seed: int
    instruction: CaptionPrompt
    conditioning: ConditioningSpec
    max_text_tokens: int
    start: Path  # the decoder training begins from
    metadata: dict
    encoder_start: Path | None = None  # the encoder training begins from (hidden_states mode)
    name: str = "rl_coldstart"

    @property
    def trains_encoder(self) -> bool:
        return self.cfg.mode == "hidden_states"

    def trainable(self) -> torch.nn.Module:
        self.encoder.model.requires_grad_(False).eval()
        self.decoder.vae.requires_grad_(False)
        self.decoder.transformer.requires_grad_(False)
        self.transformer = add_lora(self.decoder.transformer, self.cfg.lora)
        self.decoder.projector.requires_grad_(True)
        self.captions: dict[int, str] = {}
        llm = None
        if self.trains_encoder:
            # the vision tower stays adapter-free, as in Stage 2a and the release's LLM LoRA
            llm = add_lora(self.encoder.model, self.cfg.encoder_lora, scope="language_model")
            self.encoder.model = llm
        return Redraw(
            self.decoder.projector,
            self.transformer,
            self.decoder,
            Schedule.of(self.decoder.scheduler, self.cfg.sample_steps),
            self.cfg,
            llm=llm,
            negative=lambda length: negative_states(self.encoder, self.conditioning, length),
        )

    def _caption(self, index: int, record) -> str:
        if self.cfg.caption_source == "dataset":
            return record.caption
        if index not in self.captions:
            # sampled from the encoder training starts from, so a caption never depends on when it was
            # first asked for (a resumed run draws the same ones)
            frozen = self.encoder.model.disable_adapter() if self.trains_encoder else nullcontext()
            with frozen:
                self.captions[index] = self.encoder.caption(
                    [record.image],
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
            captions = [self._caption(s.index, r) for s, r in zip(chunk, records, strict=True)]
            noise, _ = initial_noise(
                self.decoder.latent_shape(self.cfg.resolution),
                [derive_seed(self.seed, "noise", s.position) for s in chunk],
            )
            batch = {"noise": noise, "originals": to_unit([r.image for r in records])}
            if self.trains_encoder:
                # answers of at most max_text_tokens tokens with their end-of-turn, like a text turn's budget
                batch["sample"] = self.encoder.sft_batch(
                    [r.image for r in records], captions, self.instruction, self.max_text_tokens - 1
                )
            else:
                with torch.no_grad():
                    reading = read(
                        self.encoder, captions, self.conditioning, negative=self.conditioning.negative
                    )
                batch["hidden"], batch["mask"] = reading.hidden, reading.keep
                batch["negative"] = (reading.negative_hidden, reading.negative_keep)
            batches.append(batch)
        return batches

    def loss(self, model, batch: dict, step: int):
        pixels = model(batch)
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
        if self.trains_encoder:
            export_encoder(
                model.llm, self.encoder.processor, out_dir, lora=True, final=final, start=self.encoder_start
            )
