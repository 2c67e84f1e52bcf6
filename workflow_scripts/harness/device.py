"""Device selection for a stage's task."""

from __future__ import annotations

import torch


def job_device(local_rank: int) -> torch.device:
    """This task's device: its GPU when there are GPUs, else the CPU (frozen models go here by hand;
    accelerate places the trainable one)."""
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
