"""Reward terms: reconstruction similarity (over the backbones of ``models.reward``) and the extras; the
tiny preset's training of those backbones."""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts.config.typed import doc
from workflow_scripts.models.config import BACKBONES, LIBRARY  # noqa: F401  (re-exported)
from workflow_scripts.train.config import LoopConfig


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


@dataclass(frozen=True, kw_only=True, slots=True)
class RewardTrainConfig:
    """The paper's reward backbones are pretrained (CLIP, LongCLIP, DINOv2/v3); the tiny preset's are
    random, and a random ViT finds any two flat scenes alike (cosine 0.96-0.998), so its reward has no room
    to rise. This stage trains each tiny backbone on the data stage's training images with its own family's
    objective before any reward or benchmark reads it, as vae_train trains the tiny VAE."""

    enabled: bool = doc(
        "Train the tiny reward backbones (only with models.source 'tiny'; published ones are used as "
        "they are)."
    )
    seed: int = doc(
        "Seed of the tiny backbones' random build and of their training's batches, in place of the run's "
        "seed: they stand in for published weights, which do not change with the recipe's seed, so runs "
        "that differ only in seed score with nearly the same reward (their training images, the run's "
        "train split, still follow the run's seed)."
    )
    resolution: int = doc("Side of the training images in pixels (one of data.resolutions).")
    view_blur: list[float] = doc(
        "Image-only backbones (DINOv2/v3): two views of an image, each blurred with a Gaussian of sigma "
        "drawn uniformly from [low, high] pixels, are pulled together against the batch's other images "
        "(InfoNCE). "
        "CLIP and LongCLIP train on image-caption pairs with CLIP's loss instead."
    )
    temperature: float = doc("InfoNCE temperature of the image-only objective (CLIP learns its own).")
    loop: LoopConfig = doc(
        "Steps, batch, optimiser, checkpoints. The negatives are the micro-batch's other images: keep "
        "micro_batch_size = batch_size."
    )

    def __post_init__(self) -> None:
        low, high = self.view_blur if len(self.view_blur) == 2 else (-1.0, -1.0)
        if not 0 <= low <= high:
            raise ValueError(
                f"reward_train.view_blur must be [low, high] with 0 <= low <= high, got {self.view_blur}"
            )
        if self.temperature <= 0:
            raise ValueError("reward_train.temperature must be > 0")
