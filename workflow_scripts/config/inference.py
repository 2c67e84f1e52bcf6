"""Sampling settings shared by training previews, RL and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workflow_scripts.config.typed import doc


@dataclass(frozen=True, kw_only=True, slots=True)
class CaptionSampling:
    instruction: str = doc(
        "User turn asking for the caption (authors: describe the image in full; transcribe any text in "
        "double quotes). Encoder SFT trains on the same turn."
    )
    temperature: float = doc("Caption sampling temperature (authors: 0.7).")
    max_new_tokens: int = doc("Caption length limit in tokens (authors: 512).")
    content_order: Literal["instruction_first", "image_first"] = doc(
        "Order of the caption turn's content: the instruction text then the image (authors' release), or "
        "the image then the instruction. Encoder SFT, RL and evaluation build the turn with the same "
        "function (models/encoder.py caption_messages), so training and inference agree."
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class ImageSampling:
    steps: int = doc("Denoising steps (authors: 40).")
    guidance_scale: float = doc("Classifier-free guidance (authors: 5.0).")
    resolution: int = doc("Output side in pixels (authors: 1024).")


@dataclass(frozen=True, kw_only=True, slots=True)
class InferenceConfig:
    caption: CaptionSampling = doc("Encoder captioning.")
    image: ImageSampling = doc("Decoder image generation.")
