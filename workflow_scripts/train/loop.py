"""The training loop every stage shares: accumulation, clipping, NaN guard, metrics, checkpoints, export.

A stage supplies a :class:`TrainTask` (what to train, its batches, its loss, how to export); the loop
never decides anything stage-specific, and the checkpointer decides when to save.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from workflow_scripts import atomic
from workflow_scripts.harness.paths import StagePaths
from workflow_scripts.train import stop
from workflow_scripts.train.checkpoint import Checkpointer
from workflow_scripts.train.config import LoopConfig
from workflow_scripts.train.engines import make_engine
from workflow_scripts.train.metrics import MetricsLog
from workflow_scripts.train.optim import build_optimizer, build_schedule

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/inf; training stopped before touching any checkpoint."""


class TrainTask(Protocol):
    name: str

    def trainable(self) -> torch.nn.Module:
        """The module the engine (train/engines.py) wraps; only its parameters with requires_grad are
        optimised. A task may also define ``param_groups(model) -> [{"params": [...], "lr_scale": s}]``
        (lr x s per group), and ``after_step(model, steps_done)``, called after every optimiser step
        before the checkpointer runs."""

    def micro_batches(self, step: int, rank: int, world: int) -> list[Any]:
        """This process's micro-batches of ``step`` (deterministic in step, rank, world)."""

    def loss(self, model: torch.nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss of one micro-batch, and extra metrics to log."""

    def export(self, model: torch.nn.Module, out_dir: Path, *, final: bool) -> None:
        """Write the model as HF/safetensors directories into ``out_dir``.

        Called at every checkpoint (``final=False``: must leave the training weights untouched, e.g.
        write LoRA adapters unmerged) and once at the end (``final=True``: may merge adapters).
        """


def train(
    task: TrainTask,
    loop: LoopConfig,
    paths: StagePaths,
    *,
    identity: str,
    finalize: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Train to ``loop.steps`` (resuming from the newest checkpoint of ``identity``) and export atomically.

    ``finalize(tmp_dir)`` runs on the main process after ``task.export`` inside the temporary export
    directory (provenance, metrics copy), before it is moved into place.
    """
    engine = make_engine(loop)
    accumulation = loop.accumulation(engine.num_processes)
    model = task.trainable()
    if loop.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    model = engine.wrap(model)  # fsdp shards here: the optimiser must see the sharded parameters
    groups = getattr(task, "param_groups", None)  # optional: per-group learning-rate scales
    optimizer = build_optimizer(groups(model) if groups else model.parameters(), loop.optim)
    schedule = build_schedule(optimizer, loop.optim, loop.steps)
    model, optimizer = engine.prepare(model, optimizer, schedule)
    params = [p for p in model.parameters() if p.requires_grad]
    after_step = getattr(task, "after_step", None)  # optional: (model, steps done) after each update

    checkpointer = Checkpointer(
        paths.checkpoints,
        engine,
        identity,
        loop.checkpoint,
        export=lambda folder: engine.export(model, lambda full: task.export(full, folder, final=False)),
    )
    start = checkpointer.resume()
    if start and engine.is_main_process:  # the launcher relays this line to the rule's log after a requeue
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        log.info("%s: resumed at step %d (restart %s)", task.name, start, restart)
    metrics = MetricsLog(paths.metrics, enabled=engine.is_main_process, resume_step=start)
    if engine.is_main_process:
        trainable = sum(p.numel() for p in params)
        log.info(
            "%s: steps %d..%d, global batch %d = %d micro x %d processes x %d accumulation, %d trainable",
            task.name,
            start,
            loop.steps,
            loop.batch_size,
            loop.micro_batch_size,
            engine.num_processes,
            accumulation,
            trainable,
        )

    model.train()
    progress = tqdm(
        range(start, loop.steps),
        initial=start,
        total=loop.steps,
        desc=task.name,
        unit="step",
        disable=not engine.is_main_process,
        mininterval=2.0,
    )
    with stop.training():
        for step in progress:
            began = time.perf_counter()
            micro = task.micro_batches(step, engine.process_index, engine.num_processes)
            if not micro or len(micro) % accumulation:
                # a task may split each sample chunk further (Flow-GRPO: one micro-batch per denoising step)
                raise RuntimeError(f"{task.name}: {len(micro)} micro-batches for accumulation {accumulation}")
            loss_sum = torch.zeros((), device=engine.device)
            extras: dict[str, float] = {}
            for i, batch in enumerate(micro):
                with engine.micro_step(model, last=i == len(micro) - 1):
                    loss, logs = task.loss(model, batch, step)
                    engine.backward(loss / len(micro))
                loss_sum += loss.detach() / len(micro)
                for key, value in logs.items():
                    extras[key] = extras.get(key, 0.0) + float(value) / len(micro)
            loss_mean = engine.reduce(loss_sum)
            grad_norm = engine.optimizer_step(params, loop.optim.grad_clip)  # no update when non-finite
            if not (torch.isfinite(loss_mean) and torch.isfinite(grad_norm)):
                last = checkpointer.latest()
                where = f"{last[1]} (step {last[0]})" if last else "none yet"
                raise NonFiniteLossError(
                    f"{task.name}: non-finite loss {loss_mean.item()} / grad norm {grad_norm.item()} at step "
                    f"{step + 1}; nothing was saved after it. Last good checkpoint: {where}. Lower the "
                    "learning rate or enable gradient clipping, then re-run the rule: it resumes from there."
                )
            if after_step is not None:  # e.g. an EMA of the weights, saved with the checkpoint below
                after_step(model, step + 1)
            if stop.aborted():  # SIGTERM: the job is going away; a requeued run may already be resuming
                stop.abort_now(f"{task.name} after step {step + 1}")

            elapsed = time.perf_counter() - began
            done = step + 1
            if done % loop.log_every == 0 or done == loop.steps:
                reduced = {
                    k: engine.reduce(torch.tensor(v, device=engine.device)).item() for k, v in extras.items()
                }
                metrics.log(
                    done,
                    loss=loss_mean.item(),
                    lr=engine.last_lr(),
                    grad_norm=grad_norm.item(),
                    step_seconds=elapsed,
                    samples_per_second=loop.batch_size / elapsed,
                    **reduced,
                )
            progress.set_postfix(loss=f"{loss_mean.item():.4f}")
            checkpointer.maybe_save(done, final=done == loop.steps)
            if _stop_requested(engine) and done < loop.steps:
                _checkpoint_and_requeue(task.name, done, checkpointer, engine)
    metrics.close()
    if stop.aborted():
        stop.abort_now(f"{task.name} before its final export")
    engine.wait_for_everyone()

    def write_final(full: torch.nn.Module) -> None:  # main process only; the gather is collective
        with atomic.directory(paths.final) as tmp:
            task.export(full, tmp, final=True)
            if finalize is not None:
                finalize(tmp)
        log.info("%s: exported %s", task.name, paths.final)

    engine.export(model, write_final, final=True)
    engine.wait_for_everyone()
    engine.end()
    return {"steps": loop.steps, "resumed_from": start, "world_size": engine.num_processes}


def _stop_requested(engine) -> bool:
    """Whether any process got USR2. Every process must stop at the same step (checkpointing is
    collective), and Slurm may deliver the signal to the ranks at different moments: agree on it."""
    local = stop.requested() == stop.Stop.CHECKPOINT
    if engine.num_processes == 1:
        return local
    flags = engine.gather(torch.tensor([int(local)], device=engine.device))
    return bool(flags.max().item())


def _checkpoint_and_requeue(name: str, done: int, checkpointer: Checkpointer, engine) -> None:
    """USR2 (preemption or the time limit is near): save the step just finished, then let submitit
    requeue the job; the requeued run resumes at step ``done``."""
    if checkpointer.last_saved != done:
        checkpointer.save(done)
    if engine.is_main_process:
        log.warning("%s: SIGUSR2: saved step %d before requeue; the next run resumes there", name, done)
    stop.proceed()  # rank 0 requeues and exits here inside a submitit job
    raise stop.TrainingStopped(f"{name}: stopped after step {done} for a requeue (checkpoint saved)")


def _enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Turn on activation recomputation in every transformers/diffusers model inside ``model``.

    A transformers model may claim support and hold no layer to recompute (Chameleon's VQ-VAE, inside
    UniToken's LM): transformers raises for it, so such a model is left as it is.
    """
    for module in model.modules():
        if getattr(module, "supports_gradient_checkpointing", False):  # transformers
            if any(hasattr(m, "gradient_checkpointing") for m in module.modules()):
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif getattr(module, "_supports_gradient_checkpointing", False):  # diffusers
            module.enable_gradient_checkpointing()
