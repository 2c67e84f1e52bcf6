"""One launcher for every stage: submitit executors (local / in-process / Slurm), wait, report failures."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import submitit

from workflow_scripts.launch import lease, slurm_state, timing
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
        folder=folder,
        cluster=CLUSTERS[kind],
        slurm_max_num_timeout=resources.max_num_timeout,
        # a local task starts through launch.processes, which ties its life to its controller
        local_python=lease.task_python(),
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
    outputs: Sequence[Path] = (),
) -> list[list[Any]]:
    """Run each callable as one job (several: one Slurm job array, ``array_parallelism`` at a time),
    wait for all, and return each job's per-task results.

    ``kind='inline'`` calls them in this process instead (one task, no scheduler): for debugging a
    stage under a debugger, and for tests that must kill the training process itself.

    A Slurm job that neither accounting nor the controller knows (a cluster without accounting, after
    MinJobAge) counts as ended after ``unknown_grace_s``.

    One writer per stage: the call holds the lease ``folder/active.json`` (:mod:`.lease`) from before it
    submits until its jobs have ended, and waits while another live launcher holds it. The lease records
    the jobs under ``attach_key``: a later call with the same key whose holder died finds them and waits
    for them instead of submitting again (when they still run, or completed and every path in
    ``outputs`` exists), so a Snakemake process that died while its jobs ran never causes a second job
    writing the same outputs. Interrupted (Ctrl-C, SIGTERM, its Snakemake gone), a local job is
    cancelled; a Slurm job runs on, recorded for the next invocation.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "inline":
        return lease.hold_inline(folder, attach_key, lambda: [_run_inline(fn, name, journal) for fn in fns])
    if kind == "local" and len(fns) > 1:  # one machine: elements take turns on the rule's cores
        common = dict(kind=kind, folder=folder, resources=resources, name=name, poll_seconds=poll_seconds)
        return [
            run_many(
                [fn],
                **common,
                journal=journal,
                attach_key=None if attach_key is None else f"{attach_key}#{k}",
                outputs=outputs,
            )[0]
            for k, fn in enumerate(fns)
        ]
    executor = make_executor(kind, folder, resources, name)
    if kind == "slurm":
        executor.update_parameters(slurm_array_parallelism=array_parallelism)
    held = lease.Lease(folder, attach_key, kind)
    jobs = _attach(held, len(fns), outputs, poll_seconds)
    if jobs is None:
        with lease.signals_deferred():  # never a submitted job that the lease does not name
            jobs = executor.submit_array(list(fns)) if len(fns) > 1 else [executor.submit(fns[0])]
            _record_active(held, jobs)
        timing.mark("submitted", jobs=[j.job_id for j in jobs], folder=str(folder))
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
        timing.mark("noticed", jobs=[j.job_id for j in jobs])
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
        _clear_active(held, jobs)
        raise JobFailedError(
            f"{name}: job {failed.job_id} ended in state {state}.\n{_log_tail(failed)}\n--- error ---\n{err}"
        ) from None
    except BaseException:  # interrupted: Ctrl-C, SIGTERM, or the Snakemake that started us is gone
        cancel()
        if kind == "local":  # _cancel_on_interrupt cancelled the job: release once its processes are gone
            _clear_active(held, jobs)
        raise  # a Slurm job runs on, named in the lease, for the next invocation to re-attach to
    finally:
        cancel()
    _clear_active(held, jobs)
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
        _log_runs(job.job_id, rows.get(job.job_id))
    log.info("%s: job(s) %s completed", name, ", ".join(j.job_id for j in jobs))
    return results


def _accounting_fields(row: dict | None) -> dict[str, Any]:
    """The journal's fields from a job's accounting: the last run's record, and the elapsed time summed
    over every run of a requeued job (its true cost), with each run's record."""
    if not row:
        return {}
    job_id = row["JobID"]
    runs = row.get("Runs") or [row]
    return {
        "state": row["State"].split(" ")[0],
        "exit_code": row["ExitCode"],
        "elapsed_seconds": float(row.get("ElapsedTotal", row["ElapsedRaw"] or 0)),
        "restarts": int(row.get("Restarts", 0)),
        "runs": [
            {
                "state": r["State"].split(" ")[0],
                "elapsed_seconds": float(r["ElapsedRaw"] or 0),
                "start": r.get("Start"),
                "end": r.get("End"),
            }
            for r in runs
        ],
        "node_list": row["NodeList"],
        "requested_tres": row["ReqTRES"],
        "array_index": int(job_id.split("_")[1]) if "_" in job_id else None,
    }


def _log_runs(job_id: str, row: dict | None) -> None:
    """A requeued job's every run in the rule's log, and the total its accounting sums to."""
    if not row or not row.get("Restarts"):
        return
    runs = ", ".join(f"{r['State'].split(' ')[0]} {r['ElapsedRaw']} s" for r in row["Runs"])
    log.info("job %s ran %d times (%s): %.0f s in all", job_id, len(row["Runs"]), runs, row["ElapsedTotal"])


def _wait(jobs: list[submitit.Job], kind: str, poll_seconds: float, grace_s: float) -> None:
    """Until every job has ended, polling every job of the stage at once: Slurm jobs with one query
    (:func:`slurm_state.poll`), local ones by their processes. The interval starts short (a stage's
    jobs often take seconds) and grows with the time waited, up to ``poll_seconds``. A Slurm job none
    of them knows, or one left in a state a requeue passes through (PREEMPTED), counts as ended after
    ``grace_s``. Every requeue is logged (reason, time, the step the trainer resumed at)."""
    began = time.time()
    unknown_since: dict[str, float] = {}
    watches = {job.job_id: _Requeues(job) for job in jobs} if kind == "slurm" else {}
    while True:
        pending = []
        if kind != "slurm":
            pending = [job for job in jobs if not job.done()]
        else:
            statuses = slurm_state.poll([job.job_id for job in jobs])
            for job in jobs:
                status = statuses.get(job.job_id) or slurm_state.Status(None)
                watches[job.job_id].update(status)
                if status.state is None or status.state in slurm_state.TRANSIENT:
                    first = unknown_since.setdefault(job.job_id, time.time())
                    if time.time() - first < grace_s and not _results_written(job):
                        pending.append(job)
                elif status.state in slurm_state.ALIVE:
                    unknown_since.pop(job.job_id, None)
                    pending.append(job)
        if not pending:
            for watch in watches.values():
                watch.relay()  # what the trainer logged since the last poll (e.g. the resumed step)
            return
        time.sleep(_poll_interval(time.time() - began, poll_seconds, kind))


def _poll_interval(waited: float, cap: float, kind: str) -> float:
    """A share of the time waited so far, between a floor and ``cap``. A Slurm poll is a scheduler query:
    a tenth, so a job is noticed finished within ~10 % of its run time. A local poll is a check of a
    child process, nearly free: a hundredth, so a stage of a few seconds is not kept waiting a second."""
    if kind == "slurm":
        return min(cap, max(1.0, waited / 10))
    return min(cap, max(0.05, waited / 100))


# lines of a training job's log that the launcher repeats in the rule's log after a requeue
_RELAYED = re.compile(r"saved step \d+ before requeue|resumed at step \d+|SIGTERM received")


class _Requeues:
    """One Slurm job's requeues: logs each when its restart count grows, with how the previous run
    ended (accounting), and relays the trainer's lines about it from the job's log."""

    def __init__(self, job: submitit.Job) -> None:
        self.job = job
        self.restarts = 0
        self.offset = 0  # of the job's log, read up to here

    def update(self, status: slurm_state.Status) -> None:
        if status.restarts > self.restarts:
            records = slurm_state.runs([self.job.job_id]).get(self.job.job_id, [])
            ended = [r for r in records if r["State"].split(" ")[0] in slurm_state.REQUEUE_STATES]
            for n in range(self.restarts + 1, status.restarts + 1):
                run = ended[n - 1] if n <= len(ended) else None
                how = (
                    f"run {n} ended {run['State'].split(' ')[0]} at {run['End']} after {run['ElapsedRaw']} s"
                    if run
                    else "accounting has no record of the previous run yet"
                )
                log.warning("job %s requeued (restart %d): %s; now %s", self.job.job_id, n, how, status.state)
            self.restarts = status.restarts
        if self.restarts:
            self.relay()

    def relay(self) -> None:
        if not self.restarts:
            return
        path = Path(self.job.paths.stderr if self.job.num_tasks <= 1 else self.job.task(0).paths.stderr)
        try:
            with open(path, "rb") as handle:
                handle.seek(self.offset)
                new = handle.read()
        except OSError:
            return
        complete = new[: new.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self.offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if _RELAYED.search(line):
                log.info("job %s: %s", self.job.job_id, line.strip())


def _results_written(job: submitit.Job) -> bool:
    tasks = [job.task(t) for t in range(job.num_tasks)] if job.num_tasks > 1 else [job]
    return all(task.paths.result_pickle.exists() for task in tasks)


def _attach(
    held: lease.Lease, count: int, outputs: Sequence[Path], poll_seconds: float
) -> list[submitit.Job] | None:
    """Take the stage's lease: the jobs of a dead holder to wait for instead of submitting (still
    running, or completed with ``outputs`` in place), else None. Waits while a live launcher holds it."""
    try:
        return held.acquire(count, outputs, poll_seconds)
    except lease.LeaseError as err:
        raise JobFailedError(str(err)) from None


def _record_active(held: lease.Lease, jobs: list[submitit.Job]) -> None:
    held.record(jobs)


def _clear_active(held: lease.Lease, jobs: Sequence[submitit.Job]) -> None:
    """Release the lease (only ours), and for local jobs only once none of their processes is alive."""
    if held.kind == "local":
        lease.stop_local(jobs)
    held.release()


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
                text = Path(path).read_text(errors="replace")
            except OSError:
                continue
            kept, bars = _without_progress_bars(text)
            if kept:
                omitted = f", {bars} progress-bar updates left out" if bars else ""
                parts.append(f"--- task {task} {label} ({path}), last {lines} lines{omitted} ---")
                parts.extend(kept[-lines:])
    return "\n".join(parts) or "(no job log found)"


# one tqdm rendering: "<desc>: 42%|####  | 5/12 [00:01<00:02, 3.1step/s, loss=1.2]" (or without a
# total: "<desc>: 5step [00:01, 3.1step/s]"), from the line start up to its closing bracket
_PROGRESS_BAR = re.compile(r"[^\r\n]*?\[\d+:\d\d(?::\d\d)?(?:<[^,\]]*)?,\s*[^\]]*?(?:/s|s/[A-Za-z]+)[^\]]*\]")


def _without_progress_bars(text: str) -> tuple[list[str], int]:
    """The log's lines without progress bars: tqdm redraws its bar with carriage returns, so a 40-line
    tail would be all bars. A line written while a bar was showing keeps its own text."""
    kept, bars = [], 0
    for segment in re.split(r"\r\n|\r|\n", text):
        rest, found = _PROGRESS_BAR.subn("", segment)
        bars += found
        if rest.strip():
            kept.append(rest.rstrip())
    return kept, bars


def _journal(path: Path | None, event: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps({"time": time.time(), **event}) + "\n")


def _cancel_on_interrupt(jobs: list[submitit.Job], kind: str) -> Callable[[], None]:
    """Local jobs die with the launcher (Ctrl-C, SIGTERM, a hang-up, or the SIGTERM the launcher sends
    itself when its Snakemake is gone); run_many releases the lease once their processes are gone. Slurm
    jobs run on, named in the lease for the next invocation to re-attach to."""
    if kind != "local":
        return lambda: None
    previous: dict[int, Any] = {}

    def handler(signum, frame):
        log.warning("interrupted: cancelling local job(s) %s", [j.job_id for j in jobs])
        for job in jobs:
            job.cancel(check=False)
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)
        previous.clear()  # called again on the way out

    return restore
