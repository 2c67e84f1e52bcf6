"""What Slurm says about a stage's jobs: their states (the controller first, accounting as fallback), how
often each was requeued, and each job's accounting records.

One ``squeue`` call answers for all of a stage's jobs per poll (the controller is current; accounting
lags it by seconds and knows nothing of a pending array element); ``sacct`` answers for the jobs the
controller has forgotten (after MinJobAge). On a cluster without accounting, a job nobody knows any
more counts as ended after a bounded wait (the launcher's grace period).

A requeued job keeps its id; ``sacct -D`` lists one record per run (the earlier ones in state REQUEUED,
PREEMPTED or NODE_FAIL), so a job's true run time is the sum over its records, not the last one's.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

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


# how a run ended when the job was requeued after it (the state of every sacct -D record but the last)
REQUEUE_STATES = {"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL"}


@dataclass(frozen=True)
class Status:
    """A job as the scheduler sees it now. ``state`` None: neither the controller nor accounting knows
    it. ``restarts``: how often it was requeued so far (Slurm's RestartCnt)."""

    state: str | None
    restarts: int = 0


def poll(job_ids: Sequence[str]) -> dict[str, Status]:
    """Every job's state and restart count: one ``squeue`` call for all of them, plus one ``sacct``
    call for those the controller no longer knows."""
    found: dict[str, Status] = {}
    if job_ids:
        queued = _run(
            "squeue",
            "-h",
            "-t",
            "all",
            "-j",
            ",".join(job_ids),
            "-O",
            "JobArrayID:64|,State:32|,RestartCnt:8|",
        )
        # rc 1 and "Invalid job id" when the controller knows none of them: accounting may
        for line in queued.stdout.splitlines() if queued is not None and queued.returncode == 0 else []:
            fields = [f.strip() for f in line.split("|")]
            if len(fields) < 3 or not fields[1]:
                continue
            restarts = int(fields[2]) if fields[2].isdigit() else 0
            for job_id in _elements(fields[0]):
                if job_id in job_ids:
                    found[job_id] = Status(fields[1].split()[0], restarts)
    forgotten = [j for j in job_ids if j not in found]
    history = runs(forgotten) if forgotten else {}
    for job_id in job_ids:
        if job_id in found:
            continue
        records = history.get(job_id)
        if not records:
            found[job_id] = Status(None)
            continue
        last = records[-1]["State"].split(" ")[0]
        # every record but the last ended in a requeue; a last one in REQUEUED awaits its next run
        found[job_id] = Status(last, len(records) - 1 + (last in REQUEUE_STATES and last in ALIVE))
    return found


def _elements(array_id: str) -> list[str]:
    """The job ids a squeue row stands for: itself, or every element of a pending array's row
    (``12_[0-3,7%2]``: elements not started yet share one row)."""
    found = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", array_id)
    if not found:
        return [array_id]
    base, ranges = found.groups()
    indices: list[int] = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        indices.extend(range(int(first), int(last or first) + 1))
    return [f"{base}_{k}" for k in indices]


def state(job_id: str) -> str | None:
    """The job's state from the controller, else from accounting; None when none of them knows it (the
    controller forgets a finished job after MinJobAge)."""
    return poll([job_id])[job_id].state


def runs(
    job_ids: Sequence[str], fields: Sequence[str] = ("JobID", "State", "ElapsedRaw", "Start", "End")
) -> dict[str, list[dict]]:
    """Each job's accounting records, one per run, oldest first (``sacct -D``); {} without accounting."""
    result = _run("sacct", "-D", "-j", ",".join(job_ids), "-X", "-n", "-P", "-o", ",".join(fields))
    if result is None or result.returncode != 0:
        return {}
    records: dict[str, list[dict]] = {}
    for line in result.stdout.splitlines():
        values = dict(zip(fields, line.split("|"), strict=False))
        records.setdefault(values["JobID"], []).append(values)
    for rows in records.values():  # sacct orders by submit time; a requeue resubmits, so this is run order
        rows.sort(key=lambda r: r.get("Start") or "")
    return records


def _final(row: dict) -> bool:
    """A finished job's complete record. Until slurmdbd has the job's start record, sacct answers with a
    stand-in (name "allocation", first node only, no requested TRES)."""
    return row.get("State", "").split(" ")[0] not in ALIVE | {""} and bool(row.get("ReqTRES"))


def accounting(job_ids: list[str], wait_s: float = 10.0) -> dict[str, dict]:
    """sacct's record of finished jobs (sacct lags a second or so behind the end of a job): the last
    run's record, plus ``Runs`` (every run's record, oldest first), ``Restarts`` and ``ElapsedTotal``
    (seconds summed over the runs)."""
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
        "Start",
        "End",
    )
    deadline = time.time() + wait_s
    while True:
        history = runs(job_ids, fields)
        if not history:
            return {}
        rows = {
            job_id: {
                **records[-1],
                "Runs": records,
                "Restarts": len(records) - 1,
                "ElapsedTotal": float(sum(int(r["ElapsedRaw"] or 0) for r in records)),
            }
            for job_id, records in history.items()
        }
        settled = all(_final(rows.get(j, {})) for j in job_ids)
        if settled or time.time() > deadline:
            return rows
        time.sleep(0.5)
