"""Launcher: the sbatch script for the paper preset, and how jobs return and fail."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_config import PAPER_PATHS
from workflow_scripts import atomic
from workflow_scripts.catalog import resources
from workflow_scripts.config.loader import parse, resolve
from workflow_scripts.launch import launcher, lease, slurm_state
from workflow_scripts.launch.config import Resources
from workflow_scripts.launch.launcher import JobFailedError, run, sbatch_script
from workflow_scripts.launch.lease import Lease, Process


def _sbatch_lines(text: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, flags=re.M))


def test_paper_preset_sbatch_asks_for_8_nodes_of_8_gpus(tmp_path):
    cfg = parse(
        resolve(
            {
                "preset": "paper",
                **PAPER_PATHS,
                "launcher": {
                    "defaults": {"partition": "h800", "account": "vision", "qos": "high", "constraint": "ib"}
                },
            }
        )
    )
    lines = _sbatch_lines(sbatch_script(tmp_path, resources(cfg, "pretrain_decoder"), "umm-paper-pretrain"))
    assert lines["nodes"] == "8"
    assert lines["gpus-per-node"] == "8"
    assert lines["ntasks-per-node"] == "8"
    assert lines["cpus-per-task"] == "12"
    assert lines["mem"] == "1000GB"
    assert lines["time"] == "2880"
    assert (lines["partition"], lines["account"], lines["qos"], lines["constraint"]) == (
        "h800",
        "vision",
        "high",
        "ib",
    )
    assert lines["job-name"] == "umm-paper-pretrain"
    assert lines["signal"].startswith("USR2@")  # submitit's preemption/timeout signal -> checkpoint()


def test_light_stage_override_reaches_sbatch(tmp_path):
    cfg = parse(resolve({"preset": "paper", **PAPER_PATHS}))
    lines = _sbatch_lines(sbatch_script(tmp_path, resources(cfg, "build_tiny_model"), "x"))
    assert lines["nodes"] == "1" and lines["ntasks-per-node"] == "1" and "gpus-per-node" not in lines


def _local(**overrides) -> Resources:
    values = dict(
        nodes=1,
        gpus_per_node=0,
        tasks_per_node=1,
        cpus_per_task=1,
        mem_gb=1,
        timeout_min=5,
        partition=None,
        account=None,
        qos=None,
        constraint=None,
        max_num_timeout=0,
    )
    return Resources(**{**values, **overrides})


def _square(x: int) -> int:
    import submitit

    return x * x + 100 * submitit.JobEnvironment().global_rank


def _explode() -> None:
    print("about to fail loudly")
    raise RuntimeError("the stage broke: missing shard 7")


def test_local_job_returns_every_task_result(tmp_path):
    results = run(
        lambda: _square(3),
        kind="local",
        folder=tmp_path,
        resources=_local(tasks_per_node=2),
        name="square",
        poll_seconds=0.2,
        journal=tmp_path / "jobs.jsonl",
    )
    assert results == [9, 109]
    events = [line for line in (tmp_path / "jobs.jsonl").read_text().splitlines()]
    assert '"submitted"' in events[0] and '"completed"' in events[-1]


def test_failed_job_reports_id_state_and_log_tail(tmp_path):
    with pytest.raises(JobFailedError) as err:
        run(_explode, kind="local", folder=tmp_path, resources=_local(), name="explode", poll_seconds=0.2)
    message = str(err.value)
    assert re.search(r"explode: job \d+ ended in state", message)
    assert "the stage broke: missing shard 7" in message
    assert "about to fail loudly" in message  # the job's stdout tail


def test_sbatch_snapshot(repo):
    """The whole rendered file, against a committed copy (update it deliberately when it should change)."""
    cfg = parse(resolve({"preset": "paper", **PAPER_PATHS}))
    folder = Path("/shared/umm/results/paper/logs/jobs/pretrain_decoder_lowres")  # absolute: as on a cluster
    text = sbatch_script(folder, resources(cfg, "pretrain_decoder"), "umm-paper-pretrain_decoder_lowres")
    assert text == (repo / "tests/assets/sbatch_paper_pretrain_decoder.txt").read_text()


# --- one writer per stage: the lease, local jobs that die with their controller, re-attach ------------
STEPS, DELAY = 12, 0.25


def _train(folder: str, steps: int = STEPS, delay: float = DELAY) -> int:
    """A stand-in trainer: resumes from its checkpoint, logs who wrote each step, checkpoints atomically."""

    work = Path(folder)
    checkpoint = work / "checkpoint.json"
    state = json.loads(checkpoint.read_text()) if checkpoint.exists() else {"step": 0, "value": 1}
    for step in range(state["step"], steps):
        time.sleep(delay)
        with open(work / "writes.log", "a") as log:
            log.write(f"{os.getpid()} {step}\n")
        state = {"step": step + 1, "value": (state["value"] * 31 + step) % 1_000_003}
        atomic.write_json(checkpoint, state)
    atomic.write_json(work / "final.json", state)
    return state["value"]


def _uninterrupted(steps: int = STEPS) -> int:
    value = 1
    for step in range(steps):
        value = (value * 31 + step) % 1_000_003
    return value


def _writes(work) -> list[tuple[int, int]]:
    path = work / "writes.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(pid), int(step)) for pid, step in (line.split() for line in lines)]


def _alive(pid: int) -> bool:
    found = Process.of(pid)
    return found is not None and bool(found.alive())


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rfind(")") + 2 :].split()[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def _lease(folder) -> dict:
    return json.loads((folder / "active.json").read_text())


def _launch(folder: str, work: str, watch: bool = False, delay: float = DELAY) -> None:
    """A launcher process (as `python -m workflow_scripts.launch` runs one) training into ``work``."""

    from workflow_scripts.launch.job import configure_logging

    configure_logging()
    if watch:
        lease.watch_owner(interval_s=0.2)
    run(
        functools.partial(_train, work, delay=delay),
        kind="local",
        folder=Path(folder),
        resources=_local(),
        name="train",
        poll_seconds=0.1,
        journal=Path(folder) / "jobs.jsonl",
        attach_key="the-key",
    )


def _launcher_command(folder, work, watch: bool = False, delay: float = DELAY) -> list[str]:
    script = (
        f"from tests.test_launcher import _launch; _launch({str(folder)!r}, {str(work)!r}, {watch}, {delay})"
    )
    return [sys.executable, "-c", script]


def test_killed_controller_takes_its_trainer_along_and_the_rerun_is_the_only_writer(tmp_path):
    """Issue 14: kill -9 of submitit's local controller left the trainer writing beside the re-run's."""

    folder, work = tmp_path / "jobs", tmp_path / "work"
    work.mkdir()
    fn = functools.partial(_train, str(work))
    common = dict(kind="local", folder=folder, resources=_local(), name="train", poll_seconds=0.1)

    def kill_controller() -> None:
        _until(lambda: len(_writes(work)) >= 3, "three training steps")
        os.kill(int(_lease(folder)["jobs"][0]["job_id"]), signal.SIGKILL)

    killer = threading.Thread(target=kill_controller)
    killer.start()
    with pytest.raises(JobFailedError):
        run(fn, **common, attach_key="the-key")
    killer.join()
    first = {pid for pid, _ in _writes(work)}
    assert not any(_alive(pid) for pid in first), "the trainer outlived its controller"
    assert not (folder / "active.json").exists()  # released, and only once its trainer was gone
    written = len(_writes(work))
    time.sleep(3 * DELAY)
    assert len(_writes(work)) == written  # nobody writes any more

    assert run(fn, **common, attach_key="the-key") == [_uninterrupted()]
    writers = [pid for pid, _ in _writes(work)]
    switches = sum(1 for a, b in itertools.pairwise(writers) if a != b)
    assert switches == 1, writers  # the old trainer, then the re-run's: never both
    last_old = max(step for pid, step in _writes(work) if pid in first)
    resumed = [step for pid, step in _writes(work) if pid not in first]
    assert resumed[0] in (last_old, last_old + 1) and resumed == list(range(resumed[0], STEPS))


def test_launcher_killed_outright_leaves_a_job_the_rerun_reattaches_to(tmp_path):
    """kill -9 of the launcher itself: its local job runs on; the next launcher waits for that job
    (re-attach) instead of starting a second trainer on the same directory."""

    folder, work = tmp_path / "jobs", tmp_path / "work"
    work.mkdir()
    first = subprocess.Popen(_launcher_command(folder, work), cwd=REPO)
    _until(lambda: len(_writes(work)) >= 2, "two training steps")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    orphan = int(_lease(folder)["jobs"][0]["job_id"])
    assert _alive(orphan)

    _launch(str(folder), str(work))  # typed again
    assert json.loads((work / "final.json").read_text())["value"] == _uninterrupted()
    assert len({pid for pid, _ in _writes(work)}) == 1  # one trainer, from start to end
    events = [json.loads(line)["event"] for line in (folder / "jobs.jsonl").read_text().splitlines()]
    assert events.count("submitted") == 1, events
    assert not (folder / "active.json").exists()


def test_launcher_stops_and_cancels_its_local_job_when_its_snakemake_is_killed(tmp_path):
    """Issue 15: after kill -9 of Snakemake its launcher kept waiting (and later deleted the lease of the
    next invocation's launcher). Snakemake runs the launcher in `bash -c`, which outlives it."""

    folder, work = tmp_path / "jobs", tmp_path / "work"
    work.mkdir()
    command = _launcher_command(folder, work, watch=True, delay=1.0)  # 12 s of training
    rule = "set -euo pipefail; " + shlex.join(command)
    rule += f" > {shlex.quote(str(tmp_path / 'rule.log'))} 2>&1"
    snakemake = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(['bash', '-c', sys.argv[1]])", rule],
        cwd=REPO,
    )
    _until(lambda: len(_writes(work)) >= 2, "two training steps")
    (shell,) = _children(snakemake.pid)
    (launcher,) = _children(shell)
    os.kill(snakemake.pid, signal.SIGKILL)
    snakemake.wait()
    _until(lambda: not _alive(launcher), "the launcher to stop", timeout=10)
    trainers = {pid for pid, _ in _writes(work)}
    assert not any(_alive(pid) for pid in trainers)  # a local job dies with its launcher
    assert not (folder / "active.json").exists()
    assert "is gone: stopping" in (tmp_path / "rule.log").read_text()


def test_only_the_holder_releases_the_lease_and_a_live_holder_is_waited_for(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        holder = Process.of(sleeper.pid)
        atomic.write_json(
            tmp_path / "active.json", {"key": "k", "kind": "local", "holder": holder.__dict__, "jobs": []}
        )
        mine = Lease(tmp_path, "k", "local")
        mine.release()  # not ours: stays
        assert _lease(tmp_path)["holder"]["pid"] == sleeper.pid
        taken = threading.Event()
        waiter = threading.Thread(target=lambda: (mine.acquire(count=1, poll_seconds=0.1), taken.set()))
        waiter.start()
        assert not taken.wait(1.0)  # waits while the holder lives
    finally:
        sleeper.kill()
        sleeper.wait()
    assert taken.wait(10)
    waiter.join()
    assert _lease(tmp_path)["holder"]["pid"] == mine.me.pid
    mine.release()
    assert not (tmp_path / "active.json").exists()


def test_a_reused_pid_does_not_hold_the_lease(tmp_path):
    """Holder identity is pid + start time: a later process with the same pid is not the holder."""

    me = Process.me()
    stale = dataclasses.replace(me, start=me.start - 1)  # our pid, an earlier process's start time
    atomic.write_json(
        tmp_path / "active.json", {"key": "k", "kind": "local", "holder": stale.__dict__, "jobs": []}
    )
    other = Lease(tmp_path, "k", "local", me=dataclasses.replace(me, start=me.start + 1))
    assert other.acquire(count=1) is None
    assert _lease(tmp_path)["holder"]["start"] == me.start + 1


def test_a_signal_during_submission_waits_until_the_job_is_recorded():
    class Stopped(Exception):
        pass

    def stop(signum, frame):
        raise Stopped

    previous = signal.signal(signal.SIGTERM, stop)
    steps = []
    try:
        with pytest.raises(Stopped), lease.signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("submitted")
            steps.append("recorded")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert steps == ["submitted", "recorded"]


class _FakeSlurm:
    """sbatch / sacct stand-ins: a job 'runs' in-process at submission and is COMPLETED at once."""

    def __init__(self, folder, monkeypatch, states: dict[str, str]) -> None:
        import submitit

        self.folder, self.states, self.submitted = folder, states, []
        monkeypatch.setattr(slurm_state, "state", lambda job_id: self.states.get(job_id))
        monkeypatch.setattr(slurm_state, "accounting", lambda job_ids, **_: {})
        fake = self

        class Executor:
            def update_parameters(self, **_) -> None:
                pass

            def submit(self, fn):
                job_id = str(5000 + len(fake.submitted))
                fake.submitted.append(job_id)
                fake.complete(job_id, fn())
                return submitit.SlurmJob(folder=fake.folder, job_id=job_id)

        monkeypatch.setattr(launcher, "make_executor", lambda *a, **k: Executor())

    def complete(self, job_id: str, value) -> None:
        from submitit.core import utils

        self.states[job_id] = "COMPLETED"
        self.folder.mkdir(parents=True, exist_ok=True)
        utils.cloudpickle_dump(("success", value), self.folder / f"{job_id}_0_result.pkl")


def _dead_holder() -> dict:
    me = Process.me()
    return dataclasses.asdict(dataclasses.replace(me, start=me.start - 1))


@pytest.mark.parametrize("outputs_kept", [True, False])
def test_job_that_completed_in_between_is_resubmitted_when_its_outputs_are_gone(
    tmp_path, monkeypatch, outputs_kept
):
    """Issue 15: the job completed while no launcher watched it, then --rerun-incomplete deleted its
    output; re-attaching to it 'succeeded' without the output (MissingOutputException)."""

    folder, output = tmp_path / "jobs", tmp_path / "train" / "final"
    slurm = _FakeSlurm(folder, monkeypatch, {})
    slurm.complete("4242", "the job that completed in between")
    atomic.write_json(
        folder / "active.json",
        {"key": "k", "kind": "slurm", "holder": _dead_holder(), "jobs": [{"job_id": "4242", "tasks": 1}]},
    )
    if outputs_kept:
        output.mkdir(parents=True)

    def resubmitted() -> str:
        output.mkdir(parents=True, exist_ok=True)  # what the new job writes (resuming from checkpoints)
        return "a new job"

    results = run(
        resubmitted,
        kind="slurm",
        folder=folder,
        resources=_local(),
        name="stage",
        poll_seconds=0.01,
        attach_key="k",
        outputs=[output],
    )
    if outputs_kept:
        assert results == ["the job that completed in between"] and slurm.submitted == []
    else:
        assert results == ["a new job"] and slurm.submitted == ["5000"]
    assert output.exists() and not (folder / "active.json").exists()


def controller_killed_mid_training(source: Path, tmp_path: Path, cwd: Path) -> dict:
    """The decoder phase on the local launcher, its submitit controller killed (-9) at step 12, then run
    again: the trainer dies with the controller, the re-run is the only writer and resumes to the weights
    of an uninterrupted run. Returns what was measured."""
    import torch

    from tests.conftest import decoder_phase_command, decoder_weights
    from workflow_scripts.train.metrics import read

    local = {"launcher": {"kind": "local"}}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(decoder_phase_command(source, whole, **local), check=True, capture_output=True, cwd=cwd)
    command = decoder_phase_command(source, cut, **local)
    first = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jobs = cut / "results" / "stage" / "logs" / "jobs" / "pretrain_decoder_lowres"
    metrics = cut / "metrics.jsonl"
    _until(lambda: metrics.exists() and any(r["step"] >= 12 for r in read(metrics)), "step 12", 600)
    controller = int(_lease(jobs)["jobs"][0]["job_id"])
    trainers = [Process(**json.loads(p.read_text())) for p in jobs.glob(f"{controller}_*_process.json")]
    assert trainers, "each local task registers its process"
    os.kill(controller, signal.SIGKILL)
    assert first.wait(timeout=120) != 0  # the stage failed, and said so
    assert not any(t.alive() for t in trainers), "the trainer outlived its controller"
    assert not (jobs / "active.json").exists()
    killed_at = max(r["step"] for r in read(metrics))
    assert not (cut / "final").exists()

    subprocess.run(command, check=True, capture_output=True, cwd=cwd)
    a, b = decoder_weights(whole / "final"), decoder_weights(cut / "final")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    return {"killed_at_step": killed_at, "trainers": [t.pid for t in trainers]}


@pytest.mark.slow
def test_killed_controller_mid_training_resumes_to_the_same_decoder_weights(tiny_dag, tmp_path):
    """Issue 14, on the real trainer: kill -9 of the local controller never leaves two writers."""
    controller_killed_mid_training(tiny_dag / "results" / "ci", tmp_path, tiny_dag)
