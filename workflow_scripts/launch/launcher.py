"""One launcher for every stage: submitit executors (local / in-process / Slurm), wait, report failures."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from workflow_scripts.launch.config import Resources

log = logging.getLogger(__name__)

CLUSTERS = {"local": "local", "slurm": "slurm"}


class JobFailedError(RuntimeError):
    """The stage's job failed or was cancelled; the message carries its id, state and log tail."""


def _parameters(resources: Resources, name: str) -> dict[str, Any]:
    """submitit's generic parameter names, plus slurm_-prefixed ones for what only Slurm knows."""
    params: dict[str, Any] = {
        "name": name,
        "nodes": resources.nodes,
        "tasks_per_node": resources.tasks_per_node,
        "cpus_per_task": resources.cpus_per_task,
        "mem_gb": resources.mem_gb,
        "timeout_min": resources.timeout_min,
    }
    if resources.gpus_per_node:
        params["gpus_per_node"] = resources.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(resources, key)
        if value:
            params[f"slurm_{key}"] = value
    return params


def make_executor(kind: str, folder: Path, resources: Resources, name: str) -> submitit.AutoExecutor:
    """A submitit executor whose parameters are exactly the stage's resources."""
    executor = submitit.AutoExecutor(
        folder=folder, cluster=CLUSTERS[kind], slurm_max_num_timeout=resources.max_num_timeout
    )
    executor.update_parameters(**_parameters(resources, name))
    return executor


class _SbatchRenderer(submitit.SlurmExecutor):
    """submitit's Slurm executor minus its check for srun: renders the sbatch file anywhere."""

    @classmethod
    def affinity(cls) -> int:
        return 1


def sbatch_script(folder: Path, resources: Resources, name: str) -> str:
    """The sbatch file submitit would submit for these resources (no cluster needed)."""
    renderer = _SbatchRenderer(folder, max_num_timeout=resources.max_num_timeout)
    params = {k.removeprefix("slurm_"): v for k, v in _parameters(resources, name).items()}
    renderer.update_parameters(**renderer._convert_parameters(params))
    return renderer._make_submission_file_text("python -u -m submitit.core._submit %j", "uid")


def run(
    fn: Callable[[], Any],
    *,
    kind: str,
    folder: Path,
    resources: Resources,
    name: str,
    poll_seconds: float,
    journal: Path | None = None,
) -> list[Any]:
    """Submit ``fn`` as one job, wait for every task, return their results in rank order.

    ``kind='inline'`` calls ``fn`` in this process instead (one task, no scheduler): for debugging a
    stage under a debugger, and for tests that must kill the training process itself.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "inline":
        return _run_inline(fn, name, journal)
    executor = make_executor(kind, folder, resources, name)
    job = executor.submit(fn)
    _journal(
        journal,
        {
            "event": "submitted",
            "job_id": job.job_id,
            "name": name,
            "kind": kind,
            "folder": str(folder),
            "nodes": resources.nodes,
            "tasks": resources.world_size,
            "gpus_per_node": resources.gpus_per_node,
        },
    )
    log.info("%s: submitted %s job %s (logs: %s)", name, kind, job.job_id, folder)
    cancel = _cancel_on_interrupt(job, kind)
    try:
        while not job.done():
            time.sleep(poll_seconds)
        results = job.results()
    except Exception as err:
        state = _state(job)
        _journal(journal, {"event": "failed", "job_id": job.job_id, "name": name, "state": state})
        raise JobFailedError(
            f"{name}: job {job.job_id} ended in state {state}.\n{_log_tail(job)}\n--- error ---\n{err}"
        ) from None
    finally:
        cancel()
    _journal(journal, {"event": "completed", "job_id": job.job_id, "name": name, "state": _state(job)})
    log.info("%s: job %s completed", name, job.job_id)
    return results


def _run_inline(fn: Callable[[], Any], name: str, journal: Path | None) -> list[Any]:
    job_id = f"inline-{os.getpid()}"
    _journal(journal, {"event": "submitted", "job_id": job_id, "name": name, "kind": "inline"})
    try:
        result = fn()
    except Exception as err:
        _journal(journal, {"event": "failed", "job_id": job_id, "name": name, "state": "FAILED"})
        raise JobFailedError(f"{name}: inline run failed.\n{traceback.format_exc()}") from err
    _journal(journal, {"event": "completed", "job_id": job_id, "name": name, "state": "COMPLETED"})
    return [result]


def _state(job: submitit.Job) -> str:
    try:
        return str(job.state)
    except Exception:  # state queries can fail once the job is gone from the scheduler
        return "UNKNOWN"


def _log_tail(job: submitit.Job, lines: int = 40) -> str:
    parts = []
    for task in range(max(1, job.num_tasks)):
        sub = job.task(task) if job.num_tasks > 1 else job
        for label, path in (("stderr", sub.paths.stderr), ("stdout", sub.paths.stdout)):
            try:
                text = Path(path).read_text(errors="replace").splitlines()
            except OSError:
                continue
            if text:
                parts.append(f"--- task {task} {label} ({path}), last {lines} lines ---")
                parts.extend(text[-lines:])
    return "\n".join(parts) or "(no job log found)"


def _journal(path: Path | None, event: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps({"time": time.time(), **event}) + "\n")


def _cancel_on_interrupt(job: submitit.Job, kind: str) -> Callable[[], None]:
    """Local jobs die with the rule that launched them (Ctrl-C / snakemake stopping)."""
    if kind != "local":
        return lambda: None
    previous = {}

    def handler(signum, frame):
        log.warning("interrupted: cancelling local job %s", job.job_id)
        job.cancel(check=False)
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
