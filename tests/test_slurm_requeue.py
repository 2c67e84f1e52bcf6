"""Preemption, requeue accounting and polling (issue 15 items 4-6).

The unit tests at the top fake the scheduler's answers; the ones marked ``slurm`` run against a real
Slurm started on this machine (tests/cluster/slurm.py; root + Debian's slurm-wlm, slurmdbd, munge,
mariadb-server). Job ids and timings of the Slurm cases go to artifacts/slurm_requeue.json.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from tests.cluster import jobs, requeue_jobs
from tests.cluster.fixture import running_cluster, small_resources
from workflow_scripts.launch import launcher, slurm_state
from workflow_scripts.launch.launcher import _accounting_fields, _log_tail, _wait, run_many
from workflow_scripts.train.loop import StagePaths, train
from workflow_scripts.warehouse import db, ingest

RECORD: dict[str, dict] = {}


# --- fakes ----------------------------------------------------------------------------------------
def _fake_job(folder: Path, job_id: str, done_at: float | None = None):
    """What the launcher reads of a submitit job: its id, log paths, result file and done()."""
    paths = SimpleNamespace(
        stderr=folder / f"{job_id}_0_log.err",
        stdout=folder / f"{job_id}_0_log.out",
        result_pickle=folder / f"{job_id}_0_result.pkl",
    )
    return SimpleNamespace(
        job_id=job_id, num_tasks=1, paths=paths, done=lambda: done_at is not None and time.time() >= done_at
    )


class FakeSlurm:
    """Answers the launcher's squeue/sacct calls from a script of states; records every call."""

    def __init__(self, polls: list[dict[str, tuple[str, int]]], history: dict[str, list[tuple]]):
        self.polls, self.history, self.calls = polls, history, []

    def __call__(self, *command: str):
        self.calls.append(command[0])
        if command[0] == "squeue":
            states = self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]
            out = "".join(f"{j:<10}|{s:<12}|{r:<4}|\n" for j, (s, r) in states.items())
        else:  # sacct -D ... -o JobID,State,ElapsedRaw,Start,End
            out = "".join(
                "|".join([job_id, *map(str, record)]) + "\n"
                for job_id, records in self.history.items()
                for record in records
            )
        return subprocess.CompletedProcess(command, 0, out, "")


# --- item 4: a stage job puts the training loop in front of submitit's signal handlers --------------
def test_a_stage_job_defers_usr2_to_the_training_loop(monkeypatch):
    from workflow_scripts.config.loader import parse, resolve
    from workflow_scripts.launch import job as stage_job
    from workflow_scripts.train import stop

    plain = resolve({})
    monkeypatch.setattr(stage_job, "load_config", lambda spec: (parse(plain), plain))
    monkeypatch.setattr(stage_job, "_in_job", lambda: True)  # as inside submitit's process_job
    phase = plain["pretrain"]["decoder"]["phases"][0]["name"]
    spec = stage_job.JobSpec(
        stage="pretrain_decoder", config="unused", stage_hash="unused", wildcards={"phase": phase}, threads=2
    )
    threads = torch.get_num_threads()
    try:
        found = stage_job.StageJob(spec, "tests.cluster.requeue_jobs:usr2_handler")()
    finally:
        stop.uninstall()
        torch.set_num_threads(threads)
    assert found == "workflow_scripts.train.stop._on_usr2"


# --- item 6: polling ------------------------------------------------------------------------------
def test_poll_interval_starts_short_and_backs_off_to_the_cap():
    interval = launcher._poll_interval
    assert interval(0, 30, "local") == 0.05 and interval(0, 30, "slurm") == 1.0
    assert interval(60, 30, "slurm") == 6.0  # a tenth of the time waited
    assert interval(3600, 30, "slurm") == 30  # never more than poll_seconds
    assert interval(0, 0.5, "slurm") == 0.5  # nor less when poll_seconds is smaller than the floor
    # a local poll checks a child process: a 10 s stage is noticed finished within a tenth of a second
    assert interval(10, 1, "local") == 0.1 and interval(600, 1, "local") == 1


def test_local_wait_notices_a_finished_job_within_a_tenth_of_a_second(tmp_path):
    job = _fake_job(tmp_path, "1", done_at=time.time() + 0.3)
    began = time.time()
    _wait([job], "local", poll_seconds=1, grace_s=60)  # tiny preset: poll_seconds 1
    waited = time.time() - began
    assert waited < 0.45, f"the local launcher added {waited - 0.3:.2f} s to a 0.3 s job"


def test_slurm_wait_queries_all_jobs_at_once_and_logs_requeues_with_the_resumed_step(
    tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="workflow_scripts.launch.launcher")
    fake = FakeSlurm(
        polls=[
            {"7_0": ("RUNNING", 0), "7_1": ("RUNNING", 0), "7_2": ("PENDING", 0)},
            {"7_0": ("PENDING", 1), "7_1": ("RUNNING", 0), "7_2": ("RUNNING", 0)},
            {"7_0": ("RUNNING", 1), "7_1": ("COMPLETED", 0), "7_2": ("RUNNING", 0)},
            {"7_0": ("COMPLETED", 1), "7_1": ("COMPLETED", 0), "7_2": ("COMPLETED", 0)},
        ],
        history={"7_0": [("PREEMPTED", 40, "2026-01-01T10:00:00", "2026-01-01T10:00:40")]},
    )
    monkeypatch.setattr(slurm_state, "_run", fake)
    elements = [_fake_job(tmp_path, f"7_{k}") for k in range(3)]
    elements[0].paths.stderr.write_text(
        "\rregression:  10%|#         | 4/40 [00:01<00:09, 3.9step/s]"
        "2026-01-01 10:00:39 WARNING workflow_scripts.train.loop: regression: SIGUSR2: saved step 17 "
        "before requeue; the next run resumes there\n"
        "2026-01-01 10:00:52 INFO workflow_scripts.train.loop: regression: resumed at step 17 (restart 1)\n"
    )
    _wait(elements, "slurm", poll_seconds=0.01, grace_s=60)
    # one squeue per poll for the whole array, and one sacct when the requeue showed up
    assert fake.calls == ["squeue", "squeue", "sacct", "squeue", "squeue"]
    text = caplog.text
    assert "job 7_0 requeued (restart 1): run 1 ended PREEMPTED at 2026-01-01T10:00:40 after 40 s" in text
    assert "saved step 17 before requeue" in text and "resumed at step 17 (restart 1)" in text
    assert text.count("resumed at step 17") == 1  # relayed once, not at every poll


def test_a_pending_array_row_stands_for_each_of_its_elements(monkeypatch):
    out = "5_[1-3,6%2]|PENDING|0|\n5_0|RUNNING|0|\n"
    monkeypatch.setattr(slurm_state, "_run", lambda *c: subprocess.CompletedProcess(c, 0, out, ""))
    found = slurm_state.poll(["5_0", "5_2", "5_6"])
    assert found == {
        "5_0": slurm_state.Status("RUNNING"),
        "5_2": slurm_state.Status("PENDING"),
        "5_6": slurm_state.Status("PENDING"),
    }


# --- item 6: failure messages ---------------------------------------------------------------------
def test_log_tail_leaves_out_progress_bars(tmp_path):
    job = _fake_job(tmp_path, "9")
    with open(job.paths.stderr, "w") as handle:
        handle.write("2026-01-01 INFO stage: starting\n")
        for _ in tqdm(range(300), file=handle, mininterval=0, desc="pretrain_decoder", unit="step"):
            pass
        for _ in tqdm(range(50), file=handle, mininterval=0):  # the default unit: it/s
            pass
        handle.write('Traceback (most recent call last):\n  File "x.py", line 1\nValueError: boom\n')
    tail = _log_tail(job)
    assert "it/s" not in tail and "step/s" not in tail and "%|" not in tail
    assert "ValueError: boom" in tail and "2026-01-01 INFO stage: starting" in tail
    assert re.search(r"\d+ progress-bar updates left out", tail), tail


# --- item 5: honest accounting --------------------------------------------------------------------
def test_accounting_sums_every_run_of_a_requeued_job(monkeypatch):
    common = {"JobID": "12", "JobName": "umm-x", "ExitCode": "0:0", "ReqTRES": "cpu=1,node=1"}
    rows = [
        {**common, "State": "REQUEUED", "ElapsedRaw": "40", "NodeList": "n1", "Start": "T1"},
        {**common, "State": "PREEMPTED", "ElapsedRaw": "83", "NodeList": "n2", "Start": "T3"},
        {**common, "State": "COMPLETED", "ElapsedRaw": "10", "NodeList": "n1", "Start": "T5"},
    ]

    def sacct_only(*command):  # the controller has forgotten the job: squeue finds nothing
        if command[0] != "sacct":
            return subprocess.CompletedProcess(command, 1, "", "Invalid job id specified")
        fields = command[command.index("-o") + 1].split(",")
        out = "".join("|".join(r.get(f, "") for f in fields) + "\n" for r in rows)
        return subprocess.CompletedProcess(command, 0, out, "")

    monkeypatch.setattr(slurm_state, "_run", sacct_only)
    row = slurm_state.accounting(["12"])["12"]
    assert (row["State"], row["Restarts"], row["ElapsedTotal"]) == ("COMPLETED", 2, 133.0)
    fields = _accounting_fields(row)
    assert fields["elapsed_seconds"] == 133.0 and fields["restarts"] == 2
    assert [r["state"] for r in fields["runs"]] == ["REQUEUED", "PREEMPTED", "COMPLETED"]
    assert slurm_state.poll(["12"])["12"] == slurm_state.Status("COMPLETED", 2)  # squeue forgot it


def test_a_job_the_scheduler_accounts_as_0_seconds_keeps_0_not_the_launchers_wall_time(tmp_path):
    journal = tmp_path / "jobs.jsonl"
    events = [
        {"event": "submitted", "job_id": "7", "name": "umm-x", "kind": "slurm", "time": 1.0e9},
        {
            "event": "completed",
            "job_id": "7",
            "state": "COMPLETED",
            "time": 1.0e9 + 3.9,
            "elapsed_seconds": 0.0,
        },
    ]
    journal.write_text("".join(json.dumps(e) + "\n" for e in events))
    path = tmp_path / "w.duckdb"
    with db.writer(path) as con:
        ingest.jobs(con, "run", journal)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT elapsed_seconds FROM jobs").fetchall() == [(0.0,)]


def test_jobs_table_stores_restarts_and_summed_elapsed_and_old_warehouses_migrate(tmp_path):
    journal = tmp_path / "jobs.jsonl"
    events = [
        {"event": "submitted", "job_id": "12", "name": "umm-x", "kind": "slurm", "time": 1.0e9},
        {"event": "completed", "job_id": "12", "state": "COMPLETED", "time": 1.0e9 + 200}
        | {"elapsed_seconds": 133.0, "restarts": 2},
    ]
    journal.write_text("".join(json.dumps(e) + "\n" for e in events))
    path = tmp_path / "w.duckdb"
    with db.writer(path) as con:  # a warehouse written by schema version 1 (no jobs.restarts)
        con.execute("ALTER TABLE jobs DROP COLUMN restarts")
        con.execute("DELETE FROM schema_version")
        con.execute("INSERT INTO schema_version VALUES (1, now())")
    with db.writer(path) as con:
        ingest.jobs(con, "run", journal)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT restarts, elapsed_seconds FROM jobs").fetchall() == [(2, 133.0)]
        assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == db.SCHEMA_VERSION


# --- item 4 with two processes: a signal to one rank stops both at the same step -------------------
@pytest.mark.slow
def test_usr2_to_one_of_two_processes_checkpoints_both_at_the_same_step(tmp_path):
    folder = tmp_path / "train"
    job = requeue_jobs.Training(str(folder), steps=30, every=1000, step_seconds=0.3)
    resources = small_resources(tasks_per_node=2, timeout_min=20)
    signalled: dict = {}

    def signal_rank_1() -> None:  # the launcher sets signal handlers: it runs in the main thread
        _wait_until(lambda: _steps_logged(folder) >= 5 and (folder / "pid-1").exists(), "5 steps", 180)
        signalled["after"] = _steps_logged(folder)
        os.kill(int((folder / "pid-1").read_text()), signal.SIGUSR2)  # rank 1 only; rank 0 requeues

    thread = threading.Thread(target=signal_rank_1, daemon=True)
    thread.start()
    (results,) = run_many(
        [job], kind="local", folder=tmp_path / "jobs", resources=resources, name="two", poll_seconds=1
    )
    thread.join(timeout=1)
    done_when_signalled = signalled["after"]
    saved = [s for s in _checkpoint_steps(folder) if s != 30]
    assert len(saved) == 1 and done_when_signalled < saved[0] <= done_when_signalled + 2
    assert [r["world_size"] for r in results] == [2, 2]
    assert all(r["resumed_from"] == saved[0] for r in results)


# --- the real cluster ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("slurm"), RECORD, "slurm_requeue.json") as slurm:
        yield slurm


def _wait_until(condition, what: str, timeout: float = 120, interval: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(interval)
    raise TimeoutError(what)


def _running_job(prefix: str) -> str | None:
    listed = subprocess.run(
        ["squeue", "-h", "-t", "RUNNING", "-o", "%i %j"], capture_output=True, text=True
    ).stdout.splitlines()
    found = [line.split()[0] for line in listed if line.split()[1].startswith(prefix)]
    return found[0] if found else None


def _steps_logged(folder: Path) -> int:
    path = folder / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _checkpoint_steps(folder: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (folder / "checkpoints").glob("step_*"))


def _in_background(**kwargs) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["results"] = run_many(
                kind="slurm", poll_seconds=0.5, resources=small_resources(), **kwargs
            )
        except BaseException as err:  # reported by the test
            outcome["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def _uninterrupted(tmp_path: Path, steps: int, every: int) -> dict:
    root = tmp_path / "whole"
    train(
        requeue_jobs.SlowRegression(0.0),
        requeue_jobs.loop_config(steps, every),
        StagePaths(root / "checkpoints", root / "metrics.jsonl", root / "final"),
        identity="requeue-test",
    )
    return load_file(root / "final/model.safetensors")


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _job_log(folder: Path, job_id: str) -> str:
    return (folder / f"{job_id}_0_log.err").read_text(errors="replace")


@pytest.mark.slurm
@pytest.mark.slow
def test_usr2_saves_the_step_in_progress_and_the_requeued_job_resumes_after_it(cluster, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="workflow_scripts.launch.launcher")
    folder, logs, journal = tmp_path / "train", tmp_path / "jobs", tmp_path / "jobs.jsonl"
    # no periodic checkpoint before the end: the only one in between is USR2's
    job = requeue_jobs.Training(str(folder), steps=40, every=1000, step_seconds=0.25)
    began = time.time()
    thread, outcome = _in_background(fns=[job], folder=logs, name="umm-test-usr2", journal=journal)
    job_id = _wait_until(lambda: _running_job("umm-test-usr2"), "the job to run")
    _wait_until(lambda: _steps_logged(folder) >= 8, "8 training steps")
    done_when_signalled = _steps_logged(folder)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what Slurm sends before preemption
    thread.join(timeout=150)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    # the step in progress when USR2 came finished and was saved; the requeued run resumed right there
    saved = [s for s in _checkpoint_steps(folder) if s != 40]
    assert len(saved) == 1 and done_when_signalled < saved[0] <= done_when_signalled + 2, (
        saved,
        done_when_signalled,
    )
    log = _job_log(logs, job_id)
    assert f"saved step {saved[0]} before requeue" in log and f"resumed at step {saved[0]}" in log
    assert _same_weights(load_file(folder / "final/model.safetensors"), _uninterrupted(tmp_path, 40, 1000))
    # the rule's log tells the story; the journal has every run's time
    assert re.search(rf"job {job_id} requeued \(restart 1\): run 1 ended \w+ at \S+ after \d+ s", caplog.text)
    assert f"job {job_id}: " in caplog.text and f"resumed at step {saved[0]}" in caplog.text
    completed = [json.loads(line) for line in journal.read_text().splitlines()][-1]
    runs = slurm_state.runs([job_id])[job_id]
    assert completed["restarts"] == 1 and len(runs) == 2
    assert completed["elapsed_seconds"] == sum(float(r["ElapsedRaw"]) for r in runs)
    assert completed["elapsed_seconds"] > float(runs[-1]["ElapsedRaw"])
    RECORD["usr2"] = {
        "job_id": job_id,
        "seconds": round(time.time() - began, 1),
        "signalled_after_step": done_when_signalled,
        "saved_and_resumed_at_step": saved[0],
        "elapsed_seconds_per_run": [float(r["ElapsedRaw"]) for r in runs],
    }


@pytest.mark.slurm
@pytest.mark.slow
def test_after_an_external_requeue_the_old_process_writes_nothing_more(cluster, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="workflow_scripts.launch.launcher")
    folder, logs, journal = tmp_path / "train", tmp_path / "jobs", tmp_path / "jobs.jsonl"
    job = requeue_jobs.Training(str(folder), steps=50, every=1, step_seconds=0.25)  # a checkpoint per step
    began = time.time()
    thread, outcome = _in_background(fns=[job], folder=logs, name="umm-test-term", journal=journal)
    job_id = _wait_until(lambda: _running_job("umm-test-term"), "the job to run")
    _wait_until(lambda: len(_checkpoint_steps(folder)) >= 6, "6 checkpoints")
    before = _checkpoint_steps(folder)[-1]
    # SIGTERM now, SIGKILL KillWait (2 s) later; the requeued run starts ~10 s later (cred_expire)
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    time.sleep(4)
    after = _checkpoint_steps(folder)[-1]
    assert after <= before + 1, f"the old process saved steps {before + 1}..{after} after SIGTERM"
    thread.join(timeout=150)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    log = _job_log(logs, job_id)
    assert "SIGTERM received: stopping regression" in log and f"resumed at step {after}" in log
    assert _same_weights(load_file(folder / "final/model.safetensors"), _uninterrupted(tmp_path, 50, 1))
    assert re.search(rf"job {job_id} requeued \(restart 1\): run 1 ended REQUEUED", caplog.text), caplog.text
    completed = [json.loads(line) for line in journal.read_text().splitlines()][-1]
    assert completed["restarts"] == 1
    RECORD["sigterm"] = {
        "job_id": job_id,
        "seconds": round(time.time() - began, 1),
        "newest_step_at_requeue": before,
        "newest_step_4s_later": after,
    }


@pytest.mark.slurm
@pytest.mark.slow
def test_a_short_job_is_noticed_in_seconds_whatever_poll_seconds_says(cluster, tmp_path, monkeypatch):
    queries: list[str] = []
    polls: list[tuple[int, list[str]]] = []  # (job ids asked about, scheduler commands it took)
    real_run, real_poll = slurm_state._run, slurm_state.poll

    def poll(job_ids):
        before = len(queries)
        found = real_poll(job_ids)
        polls.append((len(job_ids), queries[before:]))
        return found

    monkeypatch.setattr(slurm_state, "_run", lambda *c: queries.append(c[0]) or real_run(*c))
    monkeypatch.setattr(slurm_state, "poll", poll)
    began = time.time()
    (results,) = run_many(
        [functools.partial(jobs.sleep, 1)] * 2,
        kind="slurm",
        folder=tmp_path / "jobs",
        resources=small_resources(),
        name="umm-test-poll",
        poll_seconds=30,  # slurm/launcher.yaml's cap
        array_parallelism=2,
    )[:1]
    seconds = time.time() - began
    assert results == [1]
    assert seconds < 12, f"a 1 s array took {seconds:.1f} s with poll_seconds 30"
    waiting = [p for p in polls if p[0] == 2]  # the launcher's polls of the array's two elements
    assert waiting and all(commands == ["squeue"] for _, commands in waiting), waiting
    assert len(waiting) <= seconds + 1  # about one a second while the jobs are short
    RECORD["poll"] = {"seconds": round(seconds, 1), "polls": len(waiting)}
