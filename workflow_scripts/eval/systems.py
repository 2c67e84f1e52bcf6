"""A system under evaluation: a captioner, the LLM its decoder reads prompts with, and a decoder."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from workflow_scripts.config.inference import InferenceConfig
from workflow_scripts.models.conditioning import ConditioningSpec, condition
from workflow_scripts.models.encoder import CaptionPrompt, Encoder, load_encoder

if TYPE_CHECKING:  # diffusers' import is seconds: a benchmark that only asks questions never loads it
    from workflow_scripts.models.decoder import Decoder

# the model directories a variant record may name (UAE family: the first three; a release checkpoint:
# "release"; UniToken: the last two)
MODEL_PARTS = ("captioner", "text_encoder", "decoder", "release", "model", "vq")
UAE_PARTS = MODEL_PARTS[:3]


@dataclass
class System:
    name: str
    captioner: Encoder | None
    text_encoder: Encoder | None  # the reader: the LLM whose hidden states condition the decoder
    decoder: Decoder | None
    inference: InferenceConfig
    conditioning: ConditioningSpec
    caption_prompt: CaptionPrompt

    def require(self, part: str):
        if getattr(self, part) is None:
            raise ValueError(f"system '{self.name}' has no {part}; it cannot run this benchmark")
        return getattr(self, part)

    def protocol(self) -> dict:
        return {"conditioning": self.conditioning.mode}

    def caption(self, image: Image.Image, seed: int) -> str:
        sampling = self.inference.caption
        return self.require("captioner").caption(
            [image],
            self.caption_prompt,
            temperature=sampling.temperature,
            max_new_tokens=sampling.max_new_tokens,
            generator_seed=seed,
        )[0]

    def answer(self, image: Image.Image, prompt: str) -> str:
        question = CaptionPrompt(prompt, self.caption_prompt.instruction_first)
        return self.require("captioner").caption(
            [image], question, temperature=0.0, max_new_tokens=16, generator_seed=0
        )[0]

    @torch.no_grad()
    def draw(self, prompts: list[str], seeds: list[int], resolution: int) -> list[Image.Image]:
        """Images from prompts; each depends only on its own prompt and seed. 'release' conditioning draws
        one image per pipeline call, as the release does (a batched call changes the last bits);
        'fixed_length' draws the copies of a prompt in one call (its reading is batch-independent)."""
        reader, decoder = self.require("text_encoder"), self.require("decoder")
        sampling = self.inference.image
        alone = self.conditioning.mode == "release"
        pictures: dict[int, Image.Image] = {}
        for prompt in dict.fromkeys(prompts):
            embeds, negative = condition(reader, decoder.projector, [prompt], self.conditioning)
            where = [i for i, p in enumerate(prompts) if p == prompt]
            for group in [[i] for i in where] if alone else [where]:
                drawn = decoder.generate(
                    embeds.expand(len(group), -1, -1),
                    negative,
                    seeds=[seeds[i] for i in group],
                    steps=sampling.steps,
                    guidance_scale=sampling.guidance_scale,
                    resolution=resolution,
                )
                pictures.update(zip(group, drawn, strict=True))
        return [pictures[i] for i in range(len(prompts))]


def load_system(
    record: dict | Path,
    inference: InferenceConfig,
    *,
    conditioning: ConditioningSpec,
    device,
    dtype: torch.dtype,
    parts: Collection[str] = UAE_PARTS,
) -> System:
    """The system a variant record (or its JSON file) names; a component used twice is loaded once, and
    one not in ``parts`` (of UAE_PARTS: what the caller will call) not at all. A record of kind
    ``uae-release`` names a release checkpoint directory (models/release.py), loaded whole."""
    if not isinstance(record, dict):
        record = json.loads(Path(record).read_text())
    if record.get("kind") == "uae-release":
        from workflow_scripts.models.release import load_release

        release = load_release(record["release"], key=f"eval.systems.{record['variant']}.path", dtype=dtype)
        release.to(device)
        return System(
            record["variant"],
            release.encoder,
            release.encoder,  # one LLM captions and conditions
            release.decoder,
            inference,
            release.conditioning,
            release.caption_prompt(inference.caption),
        )
    loaded: dict[str, Encoder] = {}

    def encoder(part: str):
        path = record.get(part) if part in parts else None
        if not path:
            return None
        key = str(Path(path).resolve())
        if key not in loaded:
            loaded[key] = load_encoder(path, key=f"system {record['variant']}", dtype=dtype)
            loaded[key].model.to(device).eval()
        return loaded[key]

    decoder = None
    if record.get("decoder") and "decoder" in parts:
        from workflow_scripts.models.decoder import load_decoder

        decoder = load_decoder(record["decoder"], dtype=dtype)
        for part in (decoder.transformer, decoder.vae, decoder.projector):
            part.to(device).eval()
    return System(
        record["variant"],
        encoder("captioner"),
        encoder("text_encoder"),
        decoder,
        inference,
        conditioning,
        CaptionPrompt.of(inference.caption),
    )
