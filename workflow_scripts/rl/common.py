"""What the RL stages share: rollout caching per GRPO cycle, reward models, sample triples, gathering,
stored captions."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from workflow_scripts import atomic
from workflow_scripts.reward.functions import RewardModel
from workflow_scripts.rl.config import GRPOConfig

log = logging.getLogger(__name__)


def gather(values: torch.Tensor) -> torch.Tensor:
    """All processes' values, concatenated in rank order (the values themselves when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    parts = [torch.zeros_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


def gather_objects(values: list) -> list:
    """All processes' lists of picklable values, concatenated in rank order (``values`` when not
    distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    parts: list[list] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, values)
    return [v for part in parts for v in part]


@dataclass(frozen=True)
class CaptionStore:
    """Captions written once per (image id, caption seed, captioner) and kept in a JSON file of the
    stage's work directory, so a resumed or re-run job reuses them instead of captioning again.

    ``captioner`` names everything else a caption depends on: the captioner's directory fingerprint and
    the sampling settings. Entries of another captioner are dropped when the file is next written."""

    path: Path
    captioner: str

    def load(self) -> dict[tuple[str, int], str]:
        if not self.path.exists():
            return {}
        try:
            entries = json.loads(self.path.read_text())["captions"]
            return {
                (e["image_id"], int(e["seed"])): e["caption"]
                for e in entries
                if e["captioner"] == self.captioner
            }
        except (ValueError, KeyError, TypeError) as error:
            # written atomically, so only a hand edit breaks it; the captions are recomputed
            log.warning("ignoring unreadable caption store %s (%s); captioning again", self.path, error)
            return {}

    def save(self, captions: dict[tuple[str, int], str]) -> None:
        entries = [
            {"image_id": image_id, "seed": seed, "captioner": self.captioner, "caption": caption}
            for (image_id, seed), caption in sorted(captions.items())
        ]
        atomic.write_json(self.path, {"captions": entries})


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


__all__ = [
    "CaptionStore",
    "Cycles",
    "RewardModel",
    "SampleWriter",
    "gather",
    "gather_objects",
    "reward_stats",
]
