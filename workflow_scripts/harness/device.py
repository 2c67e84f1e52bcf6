"""Device selection for a stage's task. torch is imported when a device is asked for: a stage module
that imports this for its model-loading entries stays light for its entries that load none."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def job_device(local_rank: int) -> torch.device:
    """This task's device: its GPU when there are GPUs, else the CPU (frozen models go here by hand;
    accelerate places the trainable one)."""
    import torch

    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def spread_device_map() -> str | None:
    """``"auto"`` when this process is the only task on a node with several GPUs (a stage whose footprint
    is a node: the judge and captioning VLMs, 72B and 78B at the paper preset, do not fit one GPU), so
    ``from_pretrained(device_map=...)`` spreads the model over all of them; else None (one device)."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return None
    tasks_here = int(os.environ.get("SLURM_NTASKS_PER_NODE") or os.environ.get("LOCAL_WORLD_SIZE") or 1)
    return "auto" if tasks_here == 1 else None


def place(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A frozen model loaded with :func:`spread_device_map` stays where accelerate dispatched it; any other
    goes to ``device``. Either way it is put in eval mode."""
    if getattr(model, "hf_device_map", None) is None:
        model = model.to(device)
    return model.eval()
