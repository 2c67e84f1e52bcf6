"""Processes that can be told apart from a later one with the same pid, the process that started a
launcher, and the start of a local task. Kept free of heavy imports: every local task starts here
(``python -m workflow_scripts.launch.processes``) before it becomes submitit's task.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workflow_scripts import atomic

log = logging.getLogger(__name__)

SHELLS = {"bash", "sh", "dash", "zsh", "ksh"}
PR_SET_PDEATHSIG = 1


# --- processes ------------------------------------------------------------------------------------------
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3, the state, is index 0)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return text[text.rfind(")") + 2 :].split()


@dataclass(frozen=True)
class Process:
    """A process, identified so that a reused pid is not mistaken for it."""

    host: str
    boot_id: str
    pid: int
    start: int  # start time in clock ticks since boot (/proc/<pid>/stat field 22)

    @classmethod
    def of(cls, pid: int) -> Process | None:
        fields = _stat(pid)
        if fields is None:
            return None
        return cls(socket.gethostname(), _boot_id(), pid, int(fields[19]))

    @classmethod
    def me(cls) -> Process:
        found = cls.of(os.getpid())
        assert found is not None
        return found

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Process | None:
        return cls(**data) if data else None

    def local(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool | None:
        """True/False on this host; None for a process of another host (which we cannot see)."""
        if not self.local():
            return None
        if self.boot_id != _boot_id():
            return False  # the machine rebooted since
        fields = _stat(self.pid)
        # a zombie has exited (it only waits for its parent to read its status)
        return fields is not None and fields[0] not in ("Z", "X") and int(fields[19]) == self.start


def _parent(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def owner() -> Process | None:
    """The process that started this launcher: its parent, looking through ``sh -c '<command>'``
    wrappers (Snakemake runs every rule's shell command in ``bash -c``, and that shell outlives a killed
    Snakemake). None when that is init (an orphan)."""
    pid = os.getppid()
    while pid > 1:
        command = _cmdline(pid)
        wrapper = bool(command) and os.path.basename(command[0]) in SHELLS and "-c" in command[1:]
        if not wrapper:
            return Process.of(pid)
        pid = _parent(pid)
    return None


def watch_owner(interval_s: float = 1.0, started_by: Process | None = None) -> threading.Thread | None:
    """Stop this process (SIGTERM to itself) when the process that started it is gone.

    A ``kill -9`` of Snakemake leaves its rules' shells and launchers running; without this an orphaned
    launcher would keep waiting beside the next invocation's, and release a lease that is no longer its
    own. SIGTERM goes through the launcher's usual path: a local job is cancelled, a Slurm job keeps
    running (recorded in the lease) for the next invocation to re-attach to. (Not PR_SET_PDEATHSIG: our
    parent is Snakemake's wrapper shell, which outlives Snakemake.)"""
    started_by = started_by or owner()
    if started_by is None:
        return None

    def watch() -> None:
        while started_by.alive() is not False:
            time.sleep(interval_s)
        log.error(
            "the process that started this launcher (pid %d) is gone: stopping (a Slurm job keeps "
            "running and the next invocation re-attaches to it; a local job is cancelled)",
            started_by.pid,
        )
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="watch-owner", daemon=True)
    thread.start()
    return thread


# --- local tasks --------------------------------------------------------------------------------
def task_python() -> str:
    """The interpreter command submitit's local controller starts each task with: this module's
    :func:`main` in front of submitit's own entry point."""
    import shlex

    return f"{shlex.quote(sys.executable)} -m workflow_scripts.launch.processes"


def task_file(folder: Path, job_id: str, rank: int | str) -> Path:
    return Path(folder) / f"{job_id}_{rank}_process.json"


def main(argv: list[str] | None = None) -> None:
    """Start one local task: die with the controller, register this process, then become submitit's
    task (``exec``; the parent-death signal survives it)."""
    argv = sys.argv[1:] if argv is None else argv
    job_id = os.environ["SUBMITIT_LOCAL_JOB_ID"]
    # the controller's pid is the job id, unless a `setup` shell runs it (then the shell's pid is)
    controller = os.getppid() if os.environ.get("SUBMITIT_LOCAL_WITH_SHELL") else int(job_id)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != controller:  # the controller died before the signal was armed
        sys.exit(f"submitit controller {controller} is gone; not starting the task")
    folder = Path(argv[-1])
    rank = os.environ.get("SUBMITIT_LOCAL_GLOBALID", "0")
    atomic.write_json(task_file(folder, job_id, rank), asdict(Process.me()))
    os.execv(sys.executable, [sys.executable, *argv])


if __name__ == "__main__":
    main()
