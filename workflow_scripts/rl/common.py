"""What the RL stages share: rollout caching per GRPO cycle, reward models, sample triples, gathering."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from workflow_scripts.reward.backbones import Backbone, load_backbone
from workflow_scripts.reward.config import BACKBONES
from workflow_scripts.reward.functions import RewardModel
from workflow_scripts.rl.config import GRPOConfig

log = logging.getLogger(__name__)


def to_unit(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> (B, 3, H, W) float in [0, 1]."""
    return torch.stack(
        [torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1) for im in images]
    )


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    array = (pixels.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


def load_backbones(paths: dict[str, Path], names, dtype: torch.dtype, device) -> dict[str, Backbone]:
    """Each reward backbone once per job, frozen, in eval mode."""
    return {name: load_backbone(name, paths[name], dtype=dtype, device=device) for name in names}


def reward_backbone_inputs(ctx_inputs: dict[str, str]) -> dict[str, Path]:
    return {name: Path(ctx_inputs[f"reward_{name}"]) for name in BACKBONES if f"reward_{name}" in ctx_inputs}


def gather(values: torch.Tensor) -> torch.Tensor:
    """All processes' values, concatenated in rank order (the values themselves when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    parts = [torch.zeros_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


@dataclass
class Cycles:
    """Rollouts happen every ``inner_iterations`` steps; the steps in between reuse the cached rollout."""

    grpo: GRPOConfig
    cached: Any = None
    cached_step: int | None = None

    def get(self, step: int, make: Callable[[int], Any]) -> Any:
        start = step - step % self.grpo.inner_iterations
        if self.cached_step != start:
            if step != start:
                raise RuntimeError(
                    f"step {step} needs the rollout of step {start}, which this process never made"
                )
            self.cached, self.cached_step = make(step), start
        return self.cached


@dataclass
class SampleWriter:
    """(original, caption, output) triples every ``sample_every`` steps, for the report."""

    folder: Path
    grpo: GRPOConfig
    enabled: bool
    written: list[int] = field(default_factory=list)

    def maybe_write(
        self,
        step: int,
        originals: list[Image.Image],
        captions: list[str],
        outputs: list[Image.Image],
        rewards: list[float],
    ) -> None:
        if not self.enabled or step % self.grpo.sample_every:
            return
        target = self.folder / f"step_{step:06d}"
        target.mkdir(parents=True, exist_ok=True)
        index = []
        for i, (original, caption, output, reward) in enumerate(
            zip(originals, captions, outputs, rewards, strict=True)
        ):
            if i >= self.grpo.sample_count:
                break
            original.save(target / f"{i:02d}_original.png")
            output.save(target / f"{i:02d}_output.png")
            index.append(
                {
                    "original": f"{i:02d}_original.png",
                    "output": f"{i:02d}_output.png",
                    "caption": caption,
                    "reward": reward,
                }
            )
        (target / "index.json").write_text(json.dumps({"step": step, "samples": index}, indent=2))


def reward_stats(
    rewards: torch.Tensor, terms: dict[str, torch.Tensor], advantages: torch.Tensor
) -> dict[str, float]:
    stats = {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "advantage_std": float(advantages.std()) if advantages.numel() > 1 else 0.0,
    }
    stats.update({f"reward_{k}": float(v.float().mean()) for k, v in terms.items()})
    return stats


__all__ = ["Cycles", "RewardModel", "SampleWriter", "gather", "load_backbones", "to_pil", "to_unit"]
