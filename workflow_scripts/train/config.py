"""Training components' configuration: optimiser, LR schedule, checkpoints, LoRA, precision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workflow_scripts.config.typed import doc


@dataclass(frozen=True, kw_only=True, slots=True)
class OptimConfig:
    lr: float = doc("Peak learning rate (AdamW).")
    weight_decay: float = doc("AdamW weight decay.")
    betas: list[float] = doc("AdamW betas.")
    eps: float = doc("AdamW epsilon.")
    grad_clip: float = doc("Max global gradient norm (0 disables clipping).")
    warmup_steps: int = doc("Linear warm-up steps.")
    schedule: Literal["constant", "cosine", "linear"] = doc("Decay after warm-up.")

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if len(self.betas) != 2:
            raise ValueError("betas must have two values")


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointConfig:
    every_steps: int = doc("Save a resumable checkpoint every this many optimiser steps (and at the end).")
    keep_last: int = doc("Keep this many most recent checkpoints; older ones are deleted.")

    def __post_init__(self) -> None:
        if self.every_steps < 1 or self.keep_last < 1:
            raise ValueError("every_steps and keep_last must be >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class LoraConfig:
    rank: int = doc("LoRA rank r (authors' release: 32).")
    alpha: int = doc("LoRA alpha (authors' release: 64).")
    dropout: float = doc("LoRA dropout.")
    target_modules: list[str] = doc("Names of the linear layers that get adapters.")
    init: Literal["gaussian", "default"] = doc("Adapter init (authors' release: gaussian).")


@dataclass(frozen=True, kw_only=True, slots=True)
class LoopConfig:
    """What every training stage shares: length, batch geometry, precision, parallelism."""

    steps: int = doc("Optimiser steps.")
    batch_size: int = doc("Global batch (all processes, all accumulation micro-steps).")
    micro_batch_size: int = doc(
        "Samples per process per forward pass; accumulation = batch_size / (micro_batch_size * world)."
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = doc("accelerate mixed precision ('no' on CPU).")
    distributed: Literal["ddp", "fsdp", "deepspeed"] = doc(
        "How the trainable model is spread over processes (train/engines.py): 'ddp' (accelerate; a full "
        "replica per process), 'fsdp' (FSDP2 fully_shard per block: parameters, gradients and optimiser "
        "state sharded; sharded checkpoints) or 'deepspeed' (ZeRO stage zero_stage)."
    )
    zero_stage: Literal[2, 3] = doc(
        "DeepSpeed ZeRO stage when distributed = 'deepspeed': 2 shards optimiser state and gradients, "
        "3 also the parameters. Ignored by ddp and fsdp.",
        default=2,
    )
    gradient_checkpointing: bool = doc("Recompute activations in backward to save memory.")
    log_every: int = doc("Write a metrics line every this many steps.")
    optim: OptimConfig = doc("Optimiser.")
    checkpoint: CheckpointConfig = doc("Checkpoints.")

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.distributed == "fsdp" and self.mixed_precision == "fp16":
            raise ValueError(
                "mixed_precision 'fp16' needs a gradient scaler, which the fsdp engine does not run; "
                "use 'bf16' (or distributed 'ddp'/'deepspeed')"
            )
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}"
            )

    def accumulation(self, world_size: int) -> int:
        per_step = self.micro_batch_size * world_size
        if self.batch_size % per_step:
            raise ValueError(
                f"global batch_size {self.batch_size} is not divisible by micro_batch_size "
                f"{self.micro_batch_size} x {world_size} processes; change batch_size, "
                "micro_batch_size or the launcher's tasks/nodes"
            )
        return self.batch_size // per_step
