"""A small training job for the requeue tests: the shared training loop on a linear regression, slowed
down so a test can signal it mid-run. Importable by the job's Python (unlike a test module's locals)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import submitit
import torch

from workflow_scripts.launch.job import configure_logging, defer_scheduler_signals
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.train.config import CheckpointConfig, LoopConfig, OptimConfig
from workflow_scripts.train.loop import StagePaths, train


def loop_config(steps: int, every: int, keep_last: int = 1000) -> LoopConfig:
    return LoopConfig(
        steps=steps,
        batch_size=4,
        micro_batch_size=2,
        mixed_precision="no",
        distributed="ddp",
        gradient_checkpointing=False,
        log_every=1,
        optim=OptimConfig(
            lr=0.1,
            weight_decay=0.0,
            betas=[0.9, 0.999],
            eps=1e-8,
            grad_clip=1.0,
            warmup_steps=0,
            schedule="constant",
        ),
        checkpoint=CheckpointConfig(every_steps=every, keep_last=keep_last),
    )


@dataclass
class SlowRegression:
    """Fit y = 3x - 1; every step sleeps ``step_seconds`` first (a stand-in for real work)."""

    step_seconds: float
    name: str = "regression"

    def __post_init__(self) -> None:
        self.plan = BatchPlan(16, 4, 2, seed=0)

    def trainable(self):
        torch.manual_seed(0)
        return torch.nn.Linear(1, 1)

    def micro_batches(self, step, rank, world):
        return [
            torch.tensor([[float(s.index)] for s in chunk])
            for chunk in self.plan.micro_batches(step, rank, world)
        ]

    def loss(self, model, x, step):
        time.sleep(self.step_seconds / 2)
        return ((model(x / 10) - (3 * x / 10 - 1)) ** 2).mean(), {}

    def export(self, model, out_dir: Path, *, final: bool):
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "model.safetensors")


class Training(submitit.helpers.Checkpointable):
    """What a training stage's StageJob does, minus the config: defer the scheduler's signals to the
    loop, then train (resuming from the newest checkpoint in ``folder``)."""

    def __init__(self, folder: str, steps: int, every: int, step_seconds: float) -> None:
        self.folder, self.steps, self.every, self.step_seconds = folder, steps, every, step_seconds

    def __call__(self) -> dict:
        configure_logging()
        defer_scheduler_signals()
        root = Path(self.folder)
        root.mkdir(parents=True, exist_ok=True)
        rank = submitit.JobEnvironment().global_rank
        (root / f"pid-{rank}").write_text(str(os.getpid()))  # for tests that signal one task
        return train(
            SlowRegression(self.step_seconds),
            loop_config(self.steps, self.every),
            StagePaths(root / "checkpoints", root / "metrics.jsonl", root / "final"),
            identity="requeue-test",
        )


def usr2_handler(ctx) -> str:
    """A stage entry that reports who handles SIGUSR2 inside the job."""
    import signal

    handler = signal.getsignal(signal.SIGUSR2)
    return f"{handler.__module__}.{handler.__name__}"
