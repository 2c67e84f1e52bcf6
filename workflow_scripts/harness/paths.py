"""Where a training stage keeps its state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StagePaths:
    checkpoints: Path
    metrics: Path
    final: Path
