"""One writer per stage: the lease a launcher holds on its stage while the stage runs.

The lease is ``active.json`` in the stage's job folder (``results/<run>/logs/jobs/<stage>/``). That folder
is per stage *and* wildcards (``train/`` or ``data/raw/`` hold several stages' outputs side by side) and
survives what deletes outputs (``--rerun-incomplete``, ``--forcerun``); every writer of the stage is
started from it. It names

* the holder: the launcher (host, boot id, pid and the pid's start time: pids get reused), and
* its jobs: Slurm job ids, or for the local launcher the submitit controller and every task process
  (each task registers itself, see :func:`.processes.main`).

A launcher takes the lease before it submits anything. A lease it finds is taken over only when its
holder is provably dead (same host and boot: the pid is gone or now belongs to a later process; another
boot of this host: dead), and then the holder's jobs are re-attached to when they are still running, or
completed with their outputs in place; otherwise they are resubmitted (the new job resumes from the
stage's checkpoints). A live holder is waited for. Only the holder deletes the file.

Local job processes cannot outlive their job: each task starts through :func:`.processes.main`, which
asks the kernel to kill it when its controller dies (``PR_SET_PDEATHSIG``), so killing the controller can
never leave a trainer writing beside a resubmitted one. The launcher itself stops when the Snakemake
process that started it is gone (:func:`.processes.watch_owner`): a local job is cancelled, a Slurm job
keeps running and is re-attached to by the next invocation.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import submitit

from workflow_scripts import atomic
from workflow_scripts.launch import slurm_state
from workflow_scripts.launch.processes import Process, owner, task_file, task_python, watch_owner

__all__ = ["Lease", "LeaseError", "Process", "owner", "signals_deferred", "task_python", "watch_owner"]

log = logging.getLogger(__name__)

FILE = "active.json"


class LeaseError(RuntimeError):
    """The stage's lease cannot be taken safely (a holder this host cannot check)."""


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP while jobs are submitted and recorded: a launcher stopped in between
    would leave a job nobody knows of, and the next invocation would submit a second one. (Handlers,
    not a blocked signal mask: processes started meanwhile, such as the local controller, would inherit
    the mask and never see a cancel.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for signum in caught:  # now, to the handlers in force again
            signal.raise_signal(signum)


# --- local job processes ---------------------------------------------------------------------------
class LocalProcessJob(submitit.LocalJob):
    """A local job of an earlier launcher (which is gone, so the controller is not our child): alive while
    its controller or any of its task processes is, cancelled by signalling them."""

    def __init__(
        self, folder: Path, job_id: str, tasks: Sequence[int] = (0,), controller: Process | None = None
    ) -> None:
        super().__init__(folder=folder, job_id=job_id, tasks=tasks)
        self.controller = controller
        for sub in self._sub_jobs:
            sub.controller = controller

    def processes(self) -> list[Process]:
        controller = [self.controller] if self.controller else []
        return controller + _tasks(self.paths.folder, self.job_id, self.num_tasks)

    def get_info(self, mode: str = "force") -> dict[str, str]:
        if any(p.alive() for p in self.processes()):
            return {"jobState": "RUNNING"}
        return {"jobState": "FINISHED" if self.paths.result_pickle.exists() else "INTERRUPTED"}

    def cancel(self, check: bool = True) -> None:
        if self.controller and self.controller.alive():
            os.kill(self.controller.pid, signal.SIGINT)  # submitit's controller then kills its tasks


def _tasks(folder: Path, job_id: str, count: int) -> list[Process]:
    """The task processes of a local job, as each registered itself (:func:`.processes.main`)."""
    found = []
    for rank in range(max(1, count)):
        with contextlib.suppress(OSError, ValueError, TypeError):
            found.append(Process(**json.loads(task_file(folder, job_id, rank).read_text())))
    return found


def local_processes(job: submitit.Job) -> list[Process]:
    """Every process of a local job the launcher knows: its controller and its registered tasks."""
    if isinstance(job, LocalProcessJob):
        return job.processes()
    controller = Process.of(int(job.job_id))
    running = controller is not None and job._process is not None and job._process.poll() is None
    return ([controller] if running else []) + _tasks(job.paths.folder, job.job_id, job.num_tasks)


def stop_local(jobs: Sequence[submitit.Job], grace_s: float = 3.0) -> None:
    """Cancel local jobs and return only once none of their processes is alive: the lease may then pass
    to another writer. submitit cancels with SIGINT, which a process started in the background ignores
    (``nohup snakemake &``), so whatever still lives after ``grace_s`` gets SIGKILL (checkpoints are
    written atomically; the next run resumes from the last complete one)."""
    for job in jobs:
        with contextlib.suppress(Exception):
            job.cancel(check=False)
    deadline = time.time() + grace_s
    while True:
        for job in jobs:  # reap our own controller so that it does not linger as a zombie
            if getattr(job, "_process", None) is not None:
                job._process.poll()
        alive = [p for job in jobs for p in local_processes(job) if p.alive()]
        if not alive:
            return
        if time.time() > deadline:
            for process in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
        time.sleep(0.1)


# --- the lease ------------------------------------------------------------------------------------------
@dataclass
class Record:
    """What ``active.json`` holds."""

    key: str | None
    kind: str
    holder: dict[str, Any]
    jobs: list[dict[str, Any]] = field(default_factory=list)  # job_id, tasks, controller (local)
    since: float = field(default_factory=time.time)


@dataclass
class Lease:
    """The stage's lease, held by this launcher between :meth:`acquire` and :meth:`release`."""

    folder: Path
    key: str | None
    kind: str
    me: Process = field(default_factory=Process.me)

    @property
    def path(self) -> Path:
        return self.folder / FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialises read-decide-write among launchers (the kernel drops the lock if one dies)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".active.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self) -> Record | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise LeaseError(f"{self.path} is unreadable ({err}); delete it if no launcher runs") from err
        if "holder" not in data:  # written before leases: a bare job record whose launcher is gone
            data = {"key": data.get("key"), "kind": "slurm", "holder": {}, "jobs": data.get("jobs", [])}
        return Record(**{k: data[k] for k in ("key", "kind", "holder", "jobs") if k in data})

    def _write(self, jobs: list[dict[str, Any]]) -> None:
        atomic.write_json(self.path, asdict(Record(self.key, self.kind, asdict(self.me), jobs)))

    def _mine(self, record: Record | None) -> bool:
        return record is not None and Process.from_dict(record.holder) == self.me

    def acquire(
        self, count: int, outputs: Sequence[Path] = (), poll_seconds: float = 2.0
    ) -> list[submitit.Job] | None:
        """Take the lease. Returns the recorded jobs to wait for instead of submitting (their holder is
        dead; they still run, or completed and their outputs exist), else None: submit, then
        :meth:`record`. Waits while another live launcher holds the lease."""
        announced = False
        while True:
            with self._locked():
                record = self._read()
                verdict = self._judge(record, count, outputs)
                if verdict != "wait":
                    jobs = verdict if isinstance(verdict, list) else None
                    self._write(record.jobs if jobs else [])
                    return jobs
            if not announced:
                log.info(
                    "%s is held by launcher %s: waiting for it to end (one writer per stage)",
                    self.path,
                    record.holder,
                )
                announced = True
            time.sleep(max(0.2, min(poll_seconds, 5.0)))

    def _judge(self, record: Record | None, count: int, outputs: Sequence[Path]) -> str | list | None:
        """'wait', None (take it, submit) or the jobs to re-attach to."""
        if record is None or self._mine(record):
            return None
        holder = Process.from_dict(record.holder)
        holder_alive = holder.alive() if holder else False
        jobs = self._jobs(record)
        states = [self._job_state(record.kind, job) for job in jobs]
        running = any(s == "RUNNING" for s in states)
        if holder_alive:
            return "wait"
        if holder_alive is None and not jobs:
            raise LeaseError(
                f"{self.path} is held by launcher pid {holder.pid} on host {holder.host}, which this host "
                f"cannot check; if no launcher of this stage runs there any more, delete {self.path}"
            )
        same = record.key is not None and record.key == self.key and len(jobs) == count
        if record.kind != self.kind:
            same = False
        if running and not same:  # another config's job writes this stage: let it end
            return "wait"
        if running:
            log.info(
                "re-attached to job(s) %s (%s) instead of submitting again", [j.job_id for j in jobs], states
            )
            return jobs
        if jobs and same and all(s == "COMPLETED" for s in states):
            missing = [str(p) for p in outputs if not Path(p).exists()]
            if not missing:
                log.info(
                    "re-attached to job(s) %s (%s) instead of submitting again",
                    [j.job_id for j in jobs],
                    states,
                )
                return jobs
            log.info(
                "recorded job(s) %s completed but their outputs are gone (%s): submitting again (the new "
                "job resumes from the stage's checkpoints)",
                [j.job_id for j in jobs],
                ", ".join(missing),
            )
            return None
        if jobs:
            if record.kind == "local":
                stop_local(jobs)  # nothing runs, but make sure of it before a new writer starts
            log.info("recorded job(s) %s ended as %s: submitting again", [j.job_id for j in jobs], states)
        return None

    def _jobs(self, record: Record) -> list[submitit.Job]:
        folder = self.folder
        jobs: list[submitit.Job] = []
        for entry in record.jobs:
            tasks = tuple(range(int(entry.get("tasks", 1))))
            if record.kind == "slurm":
                jobs.append(submitit.SlurmJob(folder=folder, job_id=str(entry["job_id"]), tasks=tasks))
            else:
                controller = Process.from_dict(entry.get("controller"))
                jobs.append(LocalProcessJob(folder, str(entry["job_id"]), tasks, controller))
        return jobs

    @staticmethod
    def _job_state(kind: str, job: submitit.Job) -> str:
        """RUNNING (will still write), COMPLETED (every task's result is there) or ENDED."""
        done = _results_written(job)
        if kind == "slurm":
            state = slurm_state.state(job.job_id)
            if state in slurm_state.ALIVE or state in slurm_state.TRANSIENT:
                return "RUNNING"
            return "COMPLETED" if state == "COMPLETED" and done else "ENDED"
        if any(p.alive() for p in local_processes(job)):
            return "RUNNING"
        return "COMPLETED" if done and _succeeded(job) else "ENDED"

    def record(self, jobs: Sequence[submitit.Job]) -> None:
        """Name the submitted jobs in the lease (before waiting: the next invocation finds them)."""
        entries = []
        for job in jobs:
            entry: dict[str, Any] = {"job_id": job.job_id, "tasks": job.num_tasks}
            if self.kind == "local":
                controller = Process.of(int(job.job_id))
                entry["controller"] = asdict(controller) if controller else None
            entries.append(entry)
        with self._locked():
            self._write(entries)

    def release(self) -> None:
        """Delete the lease if this launcher still holds it (never another launcher's)."""
        with self._locked():
            record = self._read()
            if self._mine(record):
                self.path.unlink(missing_ok=True)
            elif record is not None:
                log.warning("%s is now held by %s: leaving it in place", self.path, record.holder)


def _results_written(job: submitit.Job) -> bool:
    tasks = [job.task(t) for t in range(job.num_tasks)] if job.num_tasks > 1 else [job]
    return all(task.paths.result_pickle.exists() for task in tasks)


def _succeeded(job: submitit.Job) -> bool:
    """Every task pickled a result, not an error."""
    tasks = [job.task(t) for t in range(job.num_tasks)] if job.num_tasks > 1 else [job]
    for task in tasks:
        try:
            outcome, _ = submitit.core.utils.pickle_load(task.paths.result_pickle)
        except Exception:  # unreadable: count it as failed, the stage runs again
            return False
        if outcome != "success":
            return False
    return True


def hold_inline(folder: Path, key: str | None, run: Callable[[], Any]) -> Any:
    """The in-process launcher is itself the writer: hold the lease around the call."""
    lease = Lease(folder, key, "inline")
    lease.acquire(count=0)
    try:
        return run()
    finally:
        lease.release()
