"""Reconstruction-similarity backbones (CLIP, LongCLIP, DINOv2, DINOv3) and their tiny shapes."""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts.config.typed import doc

BACKBONES = ("clip", "longclip", "dinov2", "dinov3")
LIBRARY = {"clip": "open_clip", "longclip": "open_clip", "dinov2": "timm", "dinov3": "timm"}


@dataclass(frozen=True, kw_only=True, slots=True)
class TinyBackboneSpec:
    """A small ViT of the backbone's own library class, random weights (tiny preset)."""

    architecture: str = doc("timm architecture name (DINO) or 'ViT' (open_clip CLIP).")
    image_size: int = doc("Input side in pixels.")
    patch_size: int = doc("Patch size (timm DINO architectures fix their own).")
    width: int = doc("Transformer width.")
    layers: int = doc("Transformer blocks.")
    heads: int = doc("Attention heads.")
    embed_dim: int = doc("CLIP joint embedding width (ignored for DINO).")
    context_length: int = doc("CLIP text positions (LongCLIP: 248; ignored for DINO).")


@dataclass(frozen=True, kw_only=True, slots=True)
class BackboneConfig:
    path: str | None = doc(
        "Local directory loadable with the library's 'local-dir:' schema: open_clip (open_clip_config.json "
        "+ weights) for CLIP/LongCLIP, timm (config.json + model.safetensors) for DINOv2/DINOv3."
    )
    tiny: TinyBackboneSpec | None = doc("Shape built when models.source is 'tiny'.")


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardModelsConfig:
    clip: BackboneConfig = doc("CLIP image encoder (paper: ViT-L/14, OpenAI weights).")
    longclip: BackboneConfig = doc("LongCLIP (a CLIP with 248 text positions; paper: LongCLIP-L).")
    dinov2: BackboneConfig = doc("DINOv2 (paper: ViT-L/14).")
    dinov3: BackboneConfig = doc("DINOv3 (Unified-Bench only; paper: ViT-L/16).")


@dataclass(frozen=True, kw_only=True, slots=True)
class ReconstructionRewardConfig:
    weight: float = doc("Weight of this reward in the total (0 = not computed).")
    alphas: dict[str, float] = doc(
        "R = sum_k alpha_k cos(f_k(x), f_k(x')) over backbones (clip, longclip, dinov2). The paper gives "
        "no values; we use equal thirds."
    )

    def __post_init__(self) -> None:
        unknown = set(self.alphas) - set(BACKBONES)
        if unknown:
            raise ValueError(f"unknown reward backbones {sorted(unknown)}; choose from {list(BACKBONES)}")


@dataclass(frozen=True, kw_only=True, slots=True)
class CaptionLengthRewardConfig:
    weight: float = doc("Weight (0 = off). A learnable sanity reward: -|words - target| / target.")
    target_words: int = doc("Target caption length in words.")


@dataclass(frozen=True, kw_only=True, slots=True)
class MeanColorRewardConfig:
    weight: float = doc("Weight (0 = off). A learnable sanity reward: -||mean RGB - target||.")
    target: list[float] = doc("Target mean colour, RGB in [0, 1].")


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardsConfig:
    """Reward functions and their weights; the total is the weighted sum of the enabled ones."""

    reconstruction: ReconstructionRewardConfig = doc("Reconstruction similarity (the UAE reward).")
    caption_length: CaptionLengthRewardConfig = doc("Caption length closeness (tests, ablations).")
    mean_color: MeanColorRewardConfig = doc("Image mean-colour closeness (tests, ablations).")

    def __post_init__(self) -> None:
        if not any(r.weight for r in (self.reconstruction, self.caption_length, self.mean_color)):
            raise ValueError("every reward weight is 0")
