"""UniToken: a Chameleon LM that reads every image twice, as VQ codes and as SigLIP features.

An image in the sequence is ``<start-of-image> <grid h> <grid w> (codes <new-line>) x rows <separator>
continuous <end-of-image>`` (the released layout, ``sequence.py``): the codes are the VQ tokenizer's
indices mapped to the LM's image-code tokens, the continuous positions hold ``<image>`` placeholders
whose embeddings are replaced by adapter(SigLIP(image)) features.

Logits are ``lm_head(model(...))`` rather than ``ChameleonForConditionalGeneration.forward``: that
forward sets every image-code logit to -inf (transformers' Chameleon only writes text), which would
make image codes impossible to learn or generate.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import ChameleonForConditionalGeneration, SiglipVisionModel

from workflow_scripts.models.paths import require_model_dir
from workflow_scripts.unitoken.sequence import Layout
from workflow_scripts.unitoken.vq import to_pixels

ADAPTER_FILE = "adapter.safetensors"
META_FILE = "unitoken.json"


class Adapter(nn.Sequential):
    """SigLIP width -> LM width -> GELU -> LM width (the released adapter)."""

    def __init__(self, vision_width: int, lm_width: int):
        super().__init__(nn.Linear(vision_width, lm_width), nn.GELU(), nn.Linear(lm_width, lm_width))


class UniToken(nn.Module):
    def __init__(
        self,
        lm: ChameleonForConditionalGeneration,
        vision: SiglipVisionModel,
        adapter: Adapter,
        layout: Layout,
    ):
        super().__init__()
        self.lm, self.vision, self.adapter = lm, vision, adapter
        self.layout = layout
        self.register_buffer("code_to_token", torch.tensor(layout.code_to_token), persistent=False)

    @property
    def vision_resolution(self) -> int:
        return self.vision.config.image_size

    def vision_pixels(self, images: list[Image.Image]) -> torch.Tensor:
        # SigLIP normalises with mean = std = 0.5: the same [-1, 1] range as the VQ tokenizer
        return to_pixels(images, self.vision_resolution)

    # --- forward ------------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with each image's adapter features at its continuous positions (in order)."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        slots = input_ids == self.layout.ids.continuous
        count = int(slots.sum())
        images = 0 if pixel_values is None else pixel_values.shape[0]
        if count != images * self.layout.continuous_slots:
            raise ValueError(
                f"{count} continuous positions for {images} images x {self.layout.continuous_slots} features"
            )
        if images:
            dtype = next(self.vision.parameters()).dtype
            features = self.adapter(self.vision(pixel_values=pixel_values.to(dtype)).last_hidden_state)
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), features.to(embeds.dtype))
        return embeds

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pixel_values: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits at every position."""
        hidden = self.lm.model(
            inputs_embeds=self.embed(input_ids, pixel_values), attention_mask=attention_mask
        ).last_hidden_state
        return self.lm.lm_head(hidden)

    # --- persistence --------------------------------------------------------------------------------
    def save_pretrained(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        self.lm.save_pretrained(out_dir / "lm")
        self.layout.tokenizer.save_pretrained(out_dir / "lm")
        self.vision.save_pretrained(out_dir / "vision")
        save_file({k: v.contiguous() for k, v in self.adapter.state_dict().items()}, out_dir / ADAPTER_FILE)
        self.write_meta(self.layout, out_dir)

    @staticmethod
    def write_meta(layout: Layout, out_dir: Path) -> None:
        (Path(out_dir) / META_FILE).write_text(json.dumps({"token_ids": asdict(layout.ids)}, indent=2))

    @classmethod
    def from_pretrained(cls, path: Path | str, *, dtype: torch.dtype = torch.float32) -> UniToken:
        path = Path(path)
        for part in ("lm", "vision"):
            require_model_dir(path / part, f"UniToken model {path}: {part}")
        model = cls.assemble(path / "lm", path / "vision", dtype=dtype)
        model.adapter.load_state_dict(load_file(path / ADAPTER_FILE))
        return model

    @classmethod
    def assemble(cls, lm_dir: Path, vision_dir: Path, *, dtype: torch.dtype = torch.float32) -> UniToken:
        """The published LM and vision tower with a freshly initialised adapter (before stage 1)."""
        lm = ChameleonForConditionalGeneration.from_pretrained(lm_dir, dtype=dtype)
        vision = SiglipVisionModel.from_pretrained(vision_dir, dtype=dtype)
        adapter = Adapter(vision.config.hidden_size, lm.config.hidden_size).to(dtype)
        return cls(lm, vision, adapter, Layout.from_dirs(lm_dir, vision_dir))
