"""What Slurm says about a job: its state (accounting first, the queue as fallback) and its accounting row.

submitit reads job states from ``sacct``; on a cluster without accounting sacct knows nothing, and a job
that died without writing a result would look unfinished forever. These helpers fall back to the
controller (``scontrol`` / ``squeue``), and the launcher gives up on a job nobody knows after a bounded
wait.
"""

from __future__ import annotations

import re
import subprocess
import time

# states in which the job will still run (or run again): never a failure
ALIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "RESV_DEL_HOLD",
    "STOPPED",
}


# states a requeued job passes through on its way back to PENDING; terminal if it stays there
TRANSIENT = {"PREEMPTED", "NODE_FAIL", "BOOT_FAIL"}


def _run(*command: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None


def state(job_id: str) -> str | None:
    """The job's state from sacct, else from the controller (scontrol, then squeue); None when none of
    them knows it (the controller forgets a finished job after MinJobAge)."""
    result = _run("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State")
    if result is not None and result.returncode == 0:
        for line in result.stdout.splitlines():
            found, _, status = line.partition("|")
            if found == job_id and status:
                return status.split()[0]
    shown = _run("scontrol", "-o", "show", "job", job_id)
    if shown is not None and shown.returncode == 0:
        found = re.search(r"\bJobState=(\S+)", shown.stdout)
        if found:
            return found.group(1)
    queued = _run("squeue", "-h", "-j", job_id, "-o", "%T")
    if queued is not None and queued.returncode == 0 and queued.stdout.strip():
        return queued.stdout.split()[0]
    return None


def _final(row: dict) -> bool:
    """A finished job's complete record. Until slurmdbd has the job's start record, sacct answers with a
    stand-in (name "allocation", first node only, no requested TRES)."""
    return row.get("State", "").split(" ")[0] not in ALIVE | {""} and bool(row.get("ReqTRES"))


def accounting(job_ids: list[str], wait_s: float = 10.0) -> dict[str, dict]:
    """sacct's record of finished jobs (sacct lags a second or so behind the end of a job)."""
    fields = (
        "JobID",
        "JobName",
        "State",
        "ExitCode",
        "ElapsedRaw",
        "NodeList",
        "ReqTRES",
        "NNodes",
        "NTasks",
    )
    deadline = time.time() + wait_s
    rows: dict[str, dict] = {}
    while True:
        result = _run("sacct", "-j", ",".join(job_ids), "-X", "-n", "-P", "-o", ",".join(fields))
        if result is None or result.returncode != 0:
            return {}
        rows = {}
        for line in result.stdout.splitlines():
            values = dict(zip(fields, line.split("|"), strict=False))
            rows[values["JobID"]] = values
        settled = all(_final(rows.get(j, {})) for j in job_ids)
        if settled or time.time() > deadline:
            return rows
        time.sleep(0.5)
