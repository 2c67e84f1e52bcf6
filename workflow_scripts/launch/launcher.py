"""One launcher for every stage: submitit executors (local / in-process / Slurm), wait, report failures."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import submitit

from workflow_scripts import atomic
from workflow_scripts.launch import slurm_state
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


def run(fn: Callable[[], Any], **kwargs: Any) -> list[Any]:
    """Submit ``fn`` as one job, wait for every task, return their results in rank order."""
    (results,) = run_many([fn], **kwargs)
    return results


def run_many(
    fns: Sequence[Callable[[], Any]],
    *,
    kind: str,
    folder: Path,
    resources: Resources,
    name: str,
    poll_seconds: float,
    journal: Path | None = None,
    attach_key: str | None = None,
    array_parallelism: int = 256,
    unknown_grace_s: float = 60.0,
) -> list[list[Any]]:
    """Run each callable as one job (several: one Slurm job array, ``array_parallelism`` at a time),
    wait for all, and return each job's per-task results.

    ``kind='inline'`` calls them in this process instead (one task, no scheduler): for debugging a
    stage under a debugger, and for tests that must kill the training process itself.

    A Slurm job that neither accounting nor the controller knows (a cluster without accounting, after
    MinJobAge) counts as ended after ``unknown_grace_s``.

    ``attach_key`` (Slurm): the jobs are recorded in ``folder/active.json``; a later call with the same
    key finds them and waits for them instead of submitting again, so a Snakemake process that died
    while its jobs ran never causes a second job writing the same outputs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "inline":
        return [_run_inline(fn, name, journal) for fn in fns]
    if kind == "local" and len(fns) > 1:  # one machine: elements take turns on the rule's cores
        common = dict(kind=kind, folder=folder, resources=resources, name=name, poll_seconds=poll_seconds)
        return [run_many([fn], **common, journal=journal)[0] for fn in fns]
    executor = make_executor(kind, folder, resources, name)
    if kind == "slurm":
        executor.update_parameters(slurm_array_parallelism=array_parallelism)
    jobs = _attach(folder, attach_key, len(fns)) if kind == "slurm" and attach_key else None
    if jobs is None:
        jobs = executor.submit_array(list(fns)) if len(fns) > 1 else [executor.submit(fns[0])]
        _record_active(folder, attach_key, jobs)
        for job in jobs:
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
        log.info(
            "%s: submitted %s job(s) %s (logs: %s)", name, kind, ", ".join(j.job_id for j in jobs), folder
        )
    cancel = _cancel_on_interrupt(jobs, kind)
    try:
        _wait(jobs, kind, poll_seconds, unknown_grace_s)
        unfinished = [j.job_id for j in jobs if not _results_written(j)]
        if unfinished:  # ended without a result: killed, cancelled, out of memory or time
            raise RuntimeError(f"job(s) {', '.join(unfinished)} ended without writing a result")
        results = [job.results() for job in jobs]
    except Exception as err:
        failed = next((j for j in jobs if not _results_written(j)), None) or next(
            (j for j in jobs if _state(j, kind) not in ("COMPLETED", "DONE", "FINISHED")), jobs[0]
        )
        state = _state(failed, kind)
        _journal(journal, {"event": "failed", "job_id": failed.job_id, "name": name, "state": state})
        _clear_active(folder)
        raise JobFailedError(
            f"{name}: job {failed.job_id} ended in state {state}.\n{_log_tail(failed)}\n--- error ---\n{err}"
        ) from None
    finally:
        cancel()
    _clear_active(folder)
    rows = slurm_state.accounting([j.job_id for j in jobs]) if kind == "slurm" else {}
    for job in jobs:
        _journal(
            journal,
            {
                "event": "completed",
                "job_id": job.job_id,
                "name": name,
                "state": _state(job, kind),
                **_accounting_fields(rows.get(job.job_id)),
            },
        )
    log.info("%s: job(s) %s completed", name, ", ".join(j.job_id for j in jobs))
    return results


def _accounting_fields(row: dict | None) -> dict[str, Any]:
    if not row:
        return {}
    job_id = row["JobID"]
    return {
        "state": row["State"].split(" ")[0],
        "exit_code": row["ExitCode"],
        "elapsed_seconds": float(row["ElapsedRaw"] or 0),
        "node_list": row["NodeList"],
        "requested_tres": row["ReqTRES"],
        "array_index": int(job_id.split("_")[1]) if "_" in job_id else None,
    }


def _wait(jobs: list[submitit.Job], kind: str, poll_seconds: float, grace_s: float) -> None:
    """Until every job has ended. Slurm jobs are polled with our own state query (accounting, then the
    controller); a job none of them knows, or one left in a state a requeue passes through (PREEMPTED),
    counts as ended after ``grace_s``."""
    unknown_since: dict[str, float] = {}
    while True:
        pending = []
        for job in jobs:
            if kind != "slurm":
                if not job.done():
                    pending.append(job)
                continue
            state = slurm_state.state(job.job_id)
            if state is None or state in slurm_state.TRANSIENT:
                first = unknown_since.setdefault(job.job_id, time.time())
                if time.time() - first < grace_s and not _results_written(job):
                    pending.append(job)
            elif state in slurm_state.ALIVE:
                unknown_since.pop(job.job_id, None)
                pending.append(job)
        if not pending:
            return
        time.sleep(poll_seconds)


def _results_written(job: submitit.Job) -> bool:
    tasks = [job.task(t) for t in range(job.num_tasks)] if job.num_tasks > 1 else [job]
    return all(task.paths.result_pickle.exists() for task in tasks)


def _attach(folder: Path, key: str, count: int) -> list[submitit.Job] | None:
    """The jobs a previous call recorded under ``key``, if Slurm still runs them or they completed."""
    record = folder / "active.json"
    if not record.exists():
        return None
    data = json.loads(record.read_text())
    if data.get("key") != key or len(data["jobs"]) != count:
        return None
    jobs = [
        submitit.SlurmJob(folder=folder, job_id=j["job_id"], tasks=tuple(range(j["tasks"])))
        for j in data["jobs"]
    ]
    states = [slurm_state.state(j.job_id) for j in jobs]
    usable = all(
        s in slurm_state.ALIVE or (s == "COMPLETED" and _results_written(j))
        for s, j in zip(states, jobs, strict=True)
    )
    if not usable:
        log.info("recorded job(s) %s ended as %s: submitting again", [j.job_id for j in jobs], states)
        return None
    log.info("re-attached to job(s) %s (%s) instead of submitting again", [j.job_id for j in jobs], states)
    return jobs


def _record_active(folder: Path, key: str | None, jobs: list[submitit.Job]) -> None:
    if key is not None:
        atomic.write_json(
            folder / "active.json",
            {"key": key, "jobs": [{"job_id": j.job_id, "tasks": j.num_tasks} for j in jobs]},
        )


def _clear_active(folder: Path) -> None:
    (folder / "active.json").unlink(missing_ok=True)


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


def _state(job: submitit.Job, kind: str) -> str:
    try:
        return (slurm_state.state(job.job_id) or "UNKNOWN") if kind == "slurm" else str(job.state)
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


def _cancel_on_interrupt(jobs: list[submitit.Job], kind: str) -> Callable[[], None]:
    """Local jobs die with the rule that launched them (Ctrl-C / Snakemake stopping); Slurm jobs run on,
    recorded for the next invocation to re-attach to."""
    if kind != "local":
        return lambda: None
    previous = {}

    def handler(signum, frame):
        log.warning("interrupted: cancelling local job(s) %s", [j.job_id for j in jobs])
        for job in jobs:
            job.cancel(check=False)
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
