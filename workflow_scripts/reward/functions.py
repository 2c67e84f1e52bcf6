"""Reward functions: plain functions of (original, image, caption) batches, weighted and summed.

The UAE reward is reconstruction similarity R = sum_k alpha_k cos(f_k(x), f_k(x')). Caption length and
mean colour are learnable sanity rewards: the GRPO learning tests train on them, where the right
direction is known.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from workflow_scripts.reward.config import RewardsConfig

if TYPE_CHECKING:  # torchvision, through the backbones' module: not every reward reads a backbone
    from workflow_scripts.reward.backbones import Backbone


@dataclass(frozen=True)
class RewardInputs:
    originals: torch.Tensor  # (B, 3, H, W) in [0, 1]
    images: torch.Tensor  # (B, 3, H', W') in [0, 1]: reconstructions or generations
    captions: list[str]


def similarities(
    backbones: dict[str, Backbone], originals: torch.Tensor, images: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Cosine similarity per backbone, (B,) each; differentiable in ``images``."""
    out = {}
    for name, backbone in backbones.items():
        with torch.no_grad():
            reference = backbone.embed(originals)
        out[name] = (backbone.embed(images) * reference).sum(-1)
    return out


def weighted(alphas: Mapping[str, float], sims: Mapping[str, Any]) -> Any:
    """The reconstruction reward from per-backbone similarities: sum_k alpha_k x sim_k (tensors or floats)."""
    return sum(alpha * sims[name] for name, alpha in alphas.items())


def caption_length(captions: list[str], target_words: int) -> torch.Tensor:
    words = torch.tensor([len(c.split()) for c in captions], dtype=torch.float32)
    return -(words - target_words).abs() / target_words


def mean_color(images: torch.Tensor, target: list[float]) -> torch.Tensor:
    means = images.float().mean(dim=(2, 3))
    return -torch.linalg.vector_norm(means - torch.tensor(target, device=images.device), dim=-1)


@dataclass
class RewardModel:
    cfg: RewardsConfig
    backbones: dict[str, Backbone]

    def __call__(self, batch: RewardInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total reward (B,) and each term (B,) for logging (reconstruction: every backbone too)."""
        terms: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(batch.captions))
        cfg = self.cfg
        if cfg.reconstruction.weight:
            sims = similarities(self.backbones, batch.originals, batch.images)
            combined = weighted(cfg.reconstruction.alphas, sims)
            terms.update({f"sim_{k}": v.detach().cpu() for k, v in sims.items()})
            terms["reconstruction"] = combined.detach().cpu()
            total = total + cfg.reconstruction.weight * terms["reconstruction"]
        if cfg.caption_length.weight:
            terms["caption_length"] = caption_length(batch.captions, cfg.caption_length.target_words)
            total = total + cfg.caption_length.weight * terms["caption_length"]
        if cfg.mean_color.weight:
            terms["mean_color"] = mean_color(batch.images, list(cfg.mean_color.target)).detach().cpu()
            total = total + cfg.mean_color.weight * terms["mean_color"]
        return total, terms


def reconstruction_loss(
    backbones: dict[str, Backbone], alphas: dict[str, float], originals: torch.Tensor, images: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """1 - R, differentiable in ``images`` (cold start)."""
    sims = similarities({k: backbones[k] for k in alphas}, originals, images)
    combined = weighted(alphas, sims)
    return (1.0 - combined).mean(), {f"sim_{k}": float(v.mean()) for k, v in sims.items()}
