"""A system under evaluation: a captioner, the LLM its decoder reads prompts with, and a decoder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from workflow_scripts.config.inference import InferenceConfig
from workflow_scripts.models.decoder import Decoder, load_decoder
from workflow_scripts.models.encoder import Encoder, load_encoder

# the model directories a variant record may name (UAE family: the first three; UniToken: the last two)
MODEL_PARTS = ("captioner", "text_encoder", "decoder", "model", "vq")


@dataclass
class System:
    name: str
    captioner: Encoder | None
    text_encoder: Encoder | None
    decoder: Decoder | None
    inference: InferenceConfig
    role: str
    max_text_tokens: int

    def require(self, part: str):
        if getattr(self, part) is None:
            raise ValueError(f"system '{self.name}' has no {part}; it cannot run this benchmark")
        return getattr(self, part)

    def caption(self, image: Image.Image, seed: int) -> str:
        sampling = self.inference.caption
        return self.require("captioner").caption(
            [image],
            sampling.instruction,
            temperature=sampling.temperature,
            max_new_tokens=sampling.max_new_tokens,
            generator_seed=seed,
        )[0]

    def answer(self, image: Image.Image, prompt: str) -> str:
        return self.require("captioner").caption(
            [image], prompt, temperature=0.0, max_new_tokens=16, generator_seed=0
        )[0]

    @torch.no_grad()
    def draw(self, prompts: list[str], seeds: list[int], resolution: int) -> list[Image.Image]:
        """Images from prompts; each depends only on its own prompt and seed."""
        reader, decoder = self.require("text_encoder"), self.require("decoder")
        sampling = self.inference.image
        dtype = decoder.projector.dtype
        embeds = decoder.projector(
            *_cast(reader.text_states(prompts, self.role, self.max_text_tokens), dtype)
        )
        negative = decoder.projector(
            *_cast(reader.text_states([sampling.negative_prompt], self.role, self.max_text_tokens), dtype)
        )
        return decoder.generate(
            embeds,
            negative,
            seeds=seeds,
            steps=sampling.steps,
            guidance_scale=sampling.guidance_scale,
            resolution=resolution,
        )


def _cast(states, dtype):
    hidden, mask = states
    return hidden.to(dtype), mask


def load_system(
    record: dict | Path,
    inference: InferenceConfig,
    *,
    role: str,
    max_text_tokens: int,
    device,
    dtype: torch.dtype,
) -> System:
    """The system a variant record (or its JSON file) names; a component used twice is loaded once."""
    if not isinstance(record, dict):
        record = json.loads(Path(record).read_text())
    loaded: dict[str, Encoder] = {}

    def encoder(path):
        if not path:
            return None
        key = str(Path(path).resolve())
        if key not in loaded:
            loaded[key] = load_encoder(path, key=f"system {record['variant']}", dtype=dtype)
            loaded[key].model.to(device).eval()
        return loaded[key]

    decoder = None
    if record.get("decoder"):
        decoder = load_decoder(record["decoder"], dtype=dtype)
        for part in (decoder.transformer, decoder.vae, decoder.projector):
            part.to(device).eval()
    return System(
        record["variant"],
        encoder(record.get("captioner")),
        encoder(record.get("text_encoder")),
        decoder,
        inference,
        role,
        max_text_tokens,
    )
