"""Re-attach on a real Slurm (tests/cluster/slurm.py): a launcher that dies never cancels its Slurm job
and never causes a second one; a job that completed while no launcher watched counts only with its
outputs. Run alone: ``pytest tests/test_slurm_reattach.py -x`` (root + Debian's Slurm packages).
Job ids and timings go to artifacts/slurm_reattach.json.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.fixture import running_cluster, small_resources
from tests.conftest import REPO
from workflow_scripts.launch import slurm_state
from workflow_scripts.launch.launcher import run
from workflow_scripts.launch.lease import Process

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
RECORD: dict[str, dict] = {}
KEY = "the-stage-key"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("slurm"), RECORD, "slurm_reattach.json", nodes=1) as slurm:
        yield slurm


def write_after(path: str, seconds: float) -> str:
    """The stage's job: works ``seconds``, then writes its output."""
    print(f"working {seconds} s", flush=True)
    time.sleep(seconds)
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / "weights").write_text(f"written by job {os.environ.get('SLURM_JOB_ID')}")
    return "trained"


def _launch(folder: str, output: str, name: str, seconds: float, watch: bool) -> None:
    """One stage's launcher process, as `python -m workflow_scripts.launch` runs it."""
    from workflow_scripts.launch import lease
    from workflow_scripts.launch.job import configure_logging

    configure_logging()
    if watch:
        lease.watch_owner(interval_s=0.2)
    _run(Path(folder), Path(output), name, seconds)


def _run(folder: Path, output: Path, name: str, seconds: float) -> list:
    return run(
        functools.partial(write_after, str(output), seconds),
        kind="slurm",
        folder=folder,
        resources=small_resources(),
        name=name,
        poll_seconds=0.5,
        journal=folder / "jobs.jsonl",
        attach_key=KEY,
        outputs=[output],
    )


def _launcher(folder: Path, output: Path, name: str, seconds: float, watch: bool = False) -> list[str]:
    args = ", ".join(repr(a) for a in (str(folder), str(output), name, seconds, watch))
    return [sys.executable, "-c", f"from tests.test_slurm_reattach import _launch; _launch({args})"]


def _until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def _recorded_job(folder: Path) -> str:
    """The job id the launcher named in the stage's lease (once it has submitted)."""

    def named() -> bool:
        try:
            return bool(json.loads((folder / "active.json").read_text())["jobs"])
        except (OSError, ValueError, KeyError):
            return False

    _until(named, "the launcher to record its job")
    return json.loads((folder / "active.json").read_text())["jobs"][0]["job_id"]


def _jobs_named(name: str) -> list[str]:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-S", "2020-01-01", "-o", "JobID,JobName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("|")[0] for line in out.splitlines() if line.endswith(f"|{name}")]


def test_killed_snakemake_stops_its_launcher_but_not_its_slurm_job_and_the_rerun_reattaches(
    cluster, tmp_path
):
    """Issue 15: after kill -9 of Snakemake its launcher kept waiting beside the next one's. Now the
    launcher stops; the Slurm job runs on, and the next invocation waits for it: one job in all."""
    folder, output, name = tmp_path / "jobs", tmp_path / "final", "umm-test-orphan"
    rule = f"set -euo pipefail; {shlex.join(_launcher(folder, output, name, 10.0, watch=True))}"
    rule += f" > {shlex.quote(str(tmp_path / 'rule.log'))} 2>&1"
    began = time.time()
    snakemake = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(['bash', '-c', sys.argv[1]])", rule],
        cwd=REPO,
    )
    job_id = _recorded_job(folder)
    launcher = json.loads((folder / "active.json").read_text())["holder"]
    _until(lambda: slurm_state.state(job_id) == "RUNNING", "the job to run")
    os.kill(snakemake.pid, signal.SIGKILL)
    snakemake.wait()
    killed_at = time.time()
    _until(lambda: not Process(**launcher).alive(), "the orphaned launcher to stop", timeout=4)
    stopped_after = time.time() - killed_at
    state = slurm_state.state(job_id)
    assert state in ("RUNNING", "COMPLETING", "COMPLETED"), state  # not cancelled
    assert "is gone: stopping" in (tmp_path / "rule.log").read_text()

    assert _run(folder, output, name, 10.0) == ["trained"]  # typed again
    assert _jobs_named(name) == [job_id]
    assert (output / "weights").read_text() == f"written by job {job_id}"
    assert not (folder / "active.json").exists()
    RECORD["orphaned_launcher"] = {
        "job_id": job_id,
        "launcher_stopped_after_seconds": round(stopped_after, 1),
        "state_when_launcher_stopped": state,
        "seconds": round(time.time() - began, 1),
    }


def test_job_completed_in_between_with_its_output_deleted_is_submitted_again(cluster, tmp_path):
    """Issue 15: the job completed before the re-run, `--rerun-incomplete` had deleted its output, and
    the launcher 're-attached' to the COMPLETED job: success without the output."""
    folder, output, name = tmp_path / "jobs", tmp_path / "final", "umm-test-completed"
    began = time.time()
    first = subprocess.Popen(_launcher(folder, output, name, 2.0), cwd=REPO)
    job_id = _recorded_job(folder)
    os.kill(first.pid, signal.SIGKILL)  # the launcher dies; its job runs to the end
    first.wait()
    _until(lambda: slurm_state.state(job_id) == "COMPLETED", "the job to complete")
    assert (output / "weights").exists()
    subprocess.run(["rm", "-r", str(output)], check=True)  # what --rerun-incomplete does

    assert _run(folder, output, name, 2.0) == ["trained"]
    jobs = _jobs_named(name)
    assert len(jobs) == 2 and jobs[0] == job_id, jobs
    assert (output / "weights").read_text() == f"written by job {jobs[1]}"
    RECORD["completed_in_between"] = {
        "first_job": job_id,
        "resubmitted_job": jobs[1],
        "seconds": round(time.time() - began, 1),
    }
