"""UniToken as a system under evaluation: it captions, answers and draws with one model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from workflow_scripts.unitoken.config import UniTokenConfig
from workflow_scripts.unitoken.model import UniToken
from workflow_scripts.unitoken.sampling import (
    AllowedTokens,
    Sampling,
    drawing_processors,
    sample,
    text_mask,
)
from workflow_scripts.unitoken.vq import VQTokenizer, to_images, to_pixels


@dataclass
class UniTokenSystem:
    name: str
    model: UniToken
    vq: VQTokenizer
    cfg: UniTokenConfig

    @property
    def device(self):
        return self.model.lm.lm_head.weight.device

    def _read(self, image: Image.Image, instruction: str, max_tokens: int, temperature: float, seed: int):
        pixels = to_pixels([image], self.vq.config.resolution).to(self.device)
        codes, _, _ = self.vq.encode(pixels)
        layout = self.model.layout
        tokens = sample(
            self.model,
            layout.caption_prompt(codes[0], instruction),
            [AllowedTokens(text_mask(self.model))],
            Sampling(steps=max_tokens, temperature=temperature, stop_token=layout.ids.end_of_turn),
            seed=seed,
            pixel_values=self.model.vision_pixels([image]).to(self.device),
        )
        return layout.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    @torch.no_grad()
    def caption(self, image: Image.Image, seed: int) -> str:
        return self._read(
            image,
            self.cfg.pretokenize.caption_instruction,
            self.cfg.sampling.max_caption_tokens,
            temperature=0.0,  # understanding decodes greedily (released)
            seed=seed,
        )

    @torch.no_grad()
    def answer(self, image: Image.Image, prompt: str) -> str:
        return self._read(image, prompt, 16, temperature=0.0, seed=0)

    @torch.no_grad()
    def draw(self, prompts: list[str], seeds: list[int], resolution: int) -> list[Image.Image]:
        """Each image in the released layout after <start-of-image> (grid sizes, rows of codes each
        ended by a new-line, end; CFG from the image start, top-k over codes), then VQ-decoded."""
        layout, sampling = self.model.layout, self.cfg.sampling
        rows = cols = self.vq.grid
        pictures = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            tokens = sample(
                self.model,
                layout.generation_prompt(prompt, self.cfg.pretokenize.generate_instruction),
                drawing_processors(self.model, rows, cols, sampling.cfg_scale),
                Sampling(
                    steps=layout.drawn_length(rows, cols),
                    temperature=sampling.image_temperature,
                    top_k=sampling.image_top_k,
                ),
                seed=seed,
            )
            codes = layout.codes_of_drawn(tokens, rows, cols).unsqueeze(0).to(self.device)
            (picture,) = to_images(self.vq.decode(codes))
            pictures.append(picture.resize((resolution, resolution), Image.BICUBIC))
        return pictures


def load_unitoken_system(record: dict, cfg: UniTokenConfig, *, device, dtype) -> UniTokenSystem:
    model = UniToken.from_pretrained(record["model"], dtype=dtype).to(device).eval()
    vq = VQTokenizer.from_pretrained(record["vq"]).to(device).eval()
    return UniTokenSystem(record["variant"], model, vq, cfg)
