"""Reward terms: reconstruction similarity (over the backbones of ``models.reward``) and the extras."""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts.config.typed import doc
from workflow_scripts.models.config import BACKBONES, LIBRARY  # noqa: F401  (re-exported)


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
