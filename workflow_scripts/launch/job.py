"""A stage run as a submitit job: a picklable, checkpointable callable around one entry function."""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from workflow_scripts.catalog import STAGES, stage_hash
from workflow_scripts.config.loader import parse
from workflow_scripts.config.root import UmmConfig
from workflow_scripts.harness.context import JobContext, JobSpec
from workflow_scripts.launch import timing

log = logging.getLogger(__name__)

# what a stage that trains or samples nothing has no use for: seconds of import and ~1 GB of memory
HEAVY = ("torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "open_clip", "timm")


def loaded_modules() -> list[str]:
    """The stage modules (entry points and gather steps of the catalog) and heavy libraries this process
    has imported."""
    stage_modules = {
        path.partition(":")[0] for stage in STAGES.values() for path in (stage.run, stage.gather) if path
    }
    return sorted(name for name in (*stage_modules, *HEAVY) if name in sys.modules)


def load_config(spec: JobSpec) -> tuple[UmmConfig, dict[str, Any]]:
    plain = json.loads(Path(spec.config).read_text())
    found = stage_hash(plain, spec.stage, **spec.wildcards)
    if found != spec.stage_hash:
        raise RuntimeError(
            f"{spec.config} changed since the DAG was built (stage {spec.stage}: view hash {found} != "
            f"{spec.stage_hash}); another snakemake invocation with a different config is running on the "
            "same run directory. Use a different run_name per config."
        )
    return parse(plain), plain


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


class StageJob(submitit.helpers.Checkpointable):
    """Runs ``target(ctx)`` in every task of the job. On preemption or timeout (SIGUSR2) a training loop
    first finishes its step and saves a checkpoint (``train/stop.py``); then submitit calls
    ``checkpoint()``, which requeues a fresh instance that resumes from that checkpoint. Outside a
    training loop USR2 requeues at once and the stage resumes from its newest on-disk checkpoint."""

    def __init__(self, spec: JobSpec, target: str) -> None:
        self.spec = spec
        self.target = target

    def __call__(self) -> Any:
        timing.mark("job_start")
        configure_logging()
        cfg, plain = load_config(self.spec)
        timing.mark("job_config")
        rank, world, local_rank = _task_geometry()
        defer_scheduler_signals()
        module, _, name = self.target.partition(":")
        entry = getattr(importlib.import_module(module), name)
        timing.mark("job_imported", modules=loaded_modules() if timing.enabled() else [])
        threads = max(1, self.spec.threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        else:  # a stage that needs no torch does not import it; one that imports it later sizes its pool
            os.environ["OMP_NUM_THREADS"] = str(threads)  # from this when torch loads
        log.info(
            "stage %s %s%s: task %d/%d (job %s)",
            self.spec.stage,
            self.spec.wildcards,
            "" if self.spec.array_index is None else f" element {self.spec.array_index}",
            rank,
            world,
            os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", "in-process"),
        )
        ctx = JobContext(self.spec, cfg, plain, rank, world, local_rank)
        began = time.perf_counter()
        timing.mark("entry_start")
        result = timing.stand_in_entry() if timing.skip_entry() else entry(ctx)
        timing.mark("entry_end", modules=loaded_modules() if timing.enabled() else [])
        # the stage's own work; the rest of the job's wall time is its fixed cost (bench_job_overhead.py)
        log.info("%s returned after %.2f s", self.target, time.perf_counter() - began)
        if _in_job():
            # the job's process exits once submitit has pickled the result: spare the collector a last
            # walk over every object the stage made (about a second for a heap holding torch + diffusers)
            gc.freeze()
        timing.mark("job_return")
        return result


def _task_geometry() -> tuple[int, int, int]:
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        return 0, 1, 0
    return env.global_rank, env.num_tasks, env.local_rank


def defer_scheduler_signals() -> None:
    """Inside a submitit job, put the training loop's handlers (``train/stop.py``) in front of
    submitit's (which it sets before calling the job): USR2 then waits for the step in progress and
    its checkpoint, and SIGTERM stops all writing. Outside a job (inline runs) nothing changes."""
    if _in_job():
        from workflow_scripts.train import stop

        stop.install()


def _in_job() -> bool:
    """Whether this process is a submitit job (not the launcher running a stage inline)."""
    try:
        submitit.JobEnvironment()
    except RuntimeError:
        return False
    return True
