"""The Slurm path against a real Slurm: daemons started on this machine (tests/cluster/slurm.py).

Needs root and Debian's slurm-wlm, slurmdbd, munge and mariadb-server (.ci/run installs them). Without
them these tests fail, naming the packages; deselect them explicitly with ``-m "not slurm"``.
Timings and job ids of each check are written to artifacts/slurm.json.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
import submitit
import torch

from tests.cluster import jobs
from tests.cluster.fixture import running_cluster, small_resources
from tests.cluster.slurm import LocalSlurm
from tests.conftest import REPO, ci_config, decoder_phase_command, decoder_weights, write_config
from workflow_scripts.catalog import JOBS, stage_hash
from workflow_scripts.launch import slurm_state
from workflow_scripts.launch.launcher import JobFailedError, _wait, run_many
from workflow_scripts.train.metrics import read

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# the tiny ci config, trimmed to one system and one benchmark, evaluated as a 2-element job array
SLURM_RUN = ci_config(
    rl={"variants": ["none"]},
    unitoken={"enabled": False},
    eval={
        "shards": 2,
        "unified_bench": {"backbones": ["clip"]},
        "geneval": {"enabled": False},
        "geneval_pp": {"enabled": False},
        "mmt": {"enabled": False},
        "judge": {"enabled": False, "pairs": []},
        "selection": {"enabled": False},
    },
)
PROFILE_COMMAND = [sys.executable, "-m", "snakemake", "--profile", "slurm", "all"]
FAST_POLL = ["--config", "launcher={poll_seconds: 1}"]
RECORD: dict[str, dict] = {}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("slurm"), RECORD, "slurm.json") as slurm:
        yield slurm


def _accounted(prefix: str) -> list[dict]:
    """Every job sacct knows whose name starts with ``prefix`` (array elements one row each)."""
    fields = ("JobID", "JobName", "State", "ExitCode", "NodeList", "ElapsedRaw")
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-S", "2020-01-01", "-o", ",".join(fields)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line]
    return [r for r in rows if r["JobName"].startswith(prefix)]


def _stage_of(row: dict) -> str:
    """The stage of a job named umm-<run>-<stage>_<wildcards>."""
    label = row["JobName"].removeprefix("umm-ci-")
    return max((s for s in JOBS if label == s or label.startswith(f"{s}_")), key=len)


def _show_job(job_id: str) -> str:
    return subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout


# --- 1. the launcher's jobs get what the stage asked for ----------------------------------------------
def test_launcher_job_gets_the_nodes_tasks_and_gpus_it_asked_for(cluster, tmp_path):
    resources = small_resources(nodes=2, gpus_per_node=3, partition="debug", timeout_min=15)
    journal = tmp_path / "jobs.jsonl"
    began = time.time()
    (results,) = run_many(
        [jobs.where_am_i],
        kind="slurm",
        folder=tmp_path / "jobs",
        resources=resources,
        name="umm-test-resources",
        poll_seconds=0.5,
        journal=journal,
    )
    assert sorted(r["node"] for r in results) == ["n1", "n2"]  # one task on each node
    assert [r["rank"] for r in sorted(results, key=lambda r: r["rank"])] == [0, 1]
    assert {r["gpus"] for r in results} == {"0,1,2"}  # --gpus-per-node=3 of the 8 fake GPUs
    job_id = results[0]["job_id"]
    shown = _show_job(job_id)
    for expected in (
        "NumNodes=2",
        "NumTasks=2",
        "Partition=debug",
        "TimeLimit=00:15:00",
        "TresPerNode=gres:gpu:3",
    ):
        assert expected in shown, (expected, shown)
    row = slurm_state.accounting([job_id])[job_id]
    assert row["State"] == "COMPLETED" and row["NodeList"] == "n[1-2]" and row["NNodes"] == "2"
    assert "gres/gpu=6" in row["ReqTRES"] and "node=2" in row["ReqTRES"]
    completed = [json.loads(line) for line in journal.read_text().splitlines()][-1]
    assert completed["event"] == "completed" and completed["node_list"] == "n[1-2]"
    assert completed["exit_code"] == "0:0" and "gres/gpu=6" in completed["requested_tres"]
    RECORD["resources"] = {"job_id": job_id, "seconds": round(time.time() - began, 1)}


# --- 5. failures surface within seconds with the job id, its state and its log ----------------------
def test_failed_and_cancelled_jobs_fail_fast_with_id_state_and_log(cluster, tmp_path):
    common = {"kind": "slurm", "resources": small_resources(), "poll_seconds": 0.5}
    with pytest.raises(JobFailedError) as failed:
        run_many([jobs.fail], folder=tmp_path / "fail", name="umm-test-fail", **common)
    message = str(failed.value)
    assert re.search(r"job \d+ ended in state FAILED", message), message
    assert "this job fails on purpose" in message and "about to fail on purpose" in message

    outcome: dict = {}

    def wait_for_sleeper() -> None:
        try:
            run_many(
                [functools.partial(jobs.sleep, 300)],
                folder=tmp_path / "cancel",
                name="umm-test-cancel",
                **common,
            )
        except JobFailedError as err:
            outcome["error"], outcome["at"] = str(err), time.time()

    waiter = threading.Thread(target=wait_for_sleeper)
    waiter.start()
    job_id = _wait_for_job("umm-test-cancel", "RUNNING")
    stdout = tmp_path / "cancel" / f"{job_id}_0_log.out"
    _wait_until(lambda: stdout.exists() and "sleeping" in stdout.read_text(), "the job to start sleeping")
    cancelled_at = time.time()
    subprocess.run(["scancel", job_id], check=True)
    waiter.join(timeout=60)
    assert "error" in outcome, "the launcher did not notice the cancelled job"
    assert f"job {job_id} ended in state CANCELLED" in outcome["error"]
    assert "sleeping 300 s" in outcome["error"]  # the job's log tail
    detected = outcome["at"] - cancelled_at
    assert detected < 15
    RECORD["failure"] = {"cancelled_job": job_id, "detected_after_seconds": round(detected, 1)}


def _wait_for_job(prefix: str, states: str, timeout: float = 180) -> str:
    """The id of the first queued job whose name starts with ``prefix`` (and is in one of ``states``)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        listed = subprocess.run(
            ["squeue", "-h", "-t", states, "-o", "%i %j"], capture_output=True, text=True
        ).stdout.splitlines()
        found = [line.split()[0] for line in listed if line.split()[1].startswith(prefix)]
        if found:
            return found[0]
        time.sleep(0.2)
    raise TimeoutError(f"no job named {prefix}* in state {states}")


def test_without_accounting_a_dead_job_is_still_detected(cluster, tmp_path, monkeypatch):
    bare = LocalSlurm(tmp_path / "bare", accounting=False, nodes=1, min_job_age=5)
    try:
        bare.start()
        monkeypatch.setenv("SLURM_CONF", str(bare.conf))
        sacct = subprocess.run(["sacct", "-j", "1"], capture_output=True, text=True)
        assert "accounting storage is disabled" in (sacct.stdout + sacct.stderr).lower()
        began = time.time()
        with pytest.raises(JobFailedError) as failed:
            run_many(
                [jobs.fail],
                kind="slurm",
                folder=tmp_path / "jobs",
                resources=small_resources(),
                name="umm-test-bare",
                poll_seconds=0.5,
            )
        assert re.search(r"ended in state FAILED", str(failed.value)), str(failed.value)
        failed_after = time.time() - began
        # a job the controller has forgotten (MinJobAge passed) and accounting never knew: bounded wait
        forgotten = submitit.SlurmJob(folder=tmp_path / "jobs", job_id="424242")
        began = time.time()
        _wait([forgotten], "slurm", poll_seconds=0.2, grace_s=3)
        assert time.time() - began < 10
    finally:
        bare.stop()
    RECORD["no_accounting"] = {"failed_job_detected_seconds": round(failed_after, 1)}


# --- 3. `snakemake --profile slurm all` from the repository root -------------------------------------
@pytest.fixture(scope="module")
def slurm_repo(cluster, tmp_path_factory):
    """A copy of this repository (what `git clone` gives) with the trimmed tiny config, after
    `snakemake --profile slurm all` ran in it against the local cluster."""
    root = tmp_path_factory.mktemp("repo")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    write_config(root, SLURM_RUN)
    began = time.time()
    result = subprocess.run(
        PROFILE_COMMAND + FAST_POLL, cwd=root, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    RECORD["profile_all"] = {"seconds": round(time.time() - began, 1), "jobs": len(_accounted("umm-ci-"))}
    return root


def test_profile_slurm_all_runs_every_stage_as_a_slurm_job(slurm_repo):
    rows = _accounted("umm-ci-")
    assert rows and all(r["State"] == "COMPLETED" and r["ExitCode"] == "0:0" for r in rows), rows
    stages = {_stage_of(r) for r in rows}
    assert {"data_build", "pretrain_encoder", "pretrain_decoder", "eval_generate", "eval_summary"} <= stages
    generate = [r["JobID"] for r in rows if _stage_of(r) == "eval_generate"]
    assert sorted(j.split("_")[1] for j in generate) == ["0", "1"]  # one array, two elements
    assert len({j.split("_")[0] for j in generate}) == 1
    RECORD["profile_all"]["array"] = generate


def test_array_result_equals_the_local_run(slurm_repo, tmp_path):
    run = slurm_repo / "results" / "ci"
    resolved = json.loads((run / "config.resolved.json").read_text())
    local = {**resolved, "results_root": str(tmp_path), "launcher": {**resolved["launcher"], "kind": "local"}}
    (tmp_path / "ci").mkdir()
    config = tmp_path / "ci" / "config.resolved.json"
    config.write_text(json.dumps(local))
    log = (run / "logs" / "eval_generate.none.unified_bench.log").read_text()
    wildcards = {"system": "none", "bench": "unified_bench"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflow_scripts.launch",
            "eval_generate",
            "--config",
            str(config),
            "--stage-hash",
            stage_hash(resolved, "eval_generate", **wildcards),
            "--wildcard",
            "system=none",
            "--wildcard",
            "bench=unified_bench",
            "--input",
            f"system={run / 'variants/none.json'}",
            "--input",
            f"item_set={run / 'eval/items/unified_bench'}",
            "--output",
            f"generated={tmp_path / 'generated.json'}",
        ],
        cwd=slurm_repo,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "submitted slurm job(s)" in log
    on_slurm = json.loads((run / "eval/none/unified_bench/generated.json").read_text())
    on_local = json.loads((tmp_path / "generated.json").read_text())
    assert len(on_slurm["shards"]) == len(on_local["shards"]) == 2
    assert on_slurm["records"] == on_local["records"] > 0
    for a, b in zip(on_slurm["shards"], on_local["shards"], strict=True):
        a, b = slurm_repo / a if not Path(a).is_absolute() else Path(a), Path(b)
        assert (a / "records.jsonl").read_text() == (b / "records.jsonl").read_text()
        for image in sorted((a / "images").iterdir()):
            assert image.read_bytes() == (b / "images" / image.name).read_bytes(), image.name


# --- 7. every job's accounting lands in the warehouse and on the report -----------------------------
def test_jobs_table_holds_each_jobs_accounting(slurm_repo):
    with duckdb.connect(str(slurm_repo / "results" / "umm.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT job_id, name, launcher, state, exit_code, node_list, elapsed_seconds, requested_tres, "
            "array_index FROM jobs WHERE run_id = 'ci'"
        ).fetchall()
    accounted = {r["JobID"]: r for r in _accounted("umm-ci-")}
    by_id = {r[0]: r for r in rows}
    assert set(accounted) <= set(by_id)
    for job_id, row in accounted.items():
        _, name, launcher, state, exit_code, node_list, elapsed, tres, index = by_id[job_id]
        assert (name, launcher, state, exit_code) == (row["JobName"], "slurm", "COMPLETED", "0:0")
        assert node_list == row["NodeList"] and elapsed == float(row["ElapsedRaw"])
        assert "cpu=" in tres and "node=1" in tres
        assert index == (int(job_id.split("_")[1]) if "_" in job_id else None)
    report = (slurm_repo / "results" / "ci" / "report" / "report.html").read_text()
    for job_id in accounted:
        assert job_id in report


# --- 3. a second invocation submits nothing; --forcerun submits the stage and its dependants --------
def test_second_run_submits_nothing_and_forcerun_only_the_stage_and_dependants(slurm_repo):
    before = {r["JobID"] for r in _accounted("umm-ci-")}
    again = subprocess.run(PROFILE_COMMAND + FAST_POLL, cwd=slurm_repo, capture_output=True, text=True)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    assert {r["JobID"] for r in _accounted("umm-ci-")} == before
    forced = subprocess.run(
        [*PROFILE_COMMAND, "--forcerun", "eval_generate", *FAST_POLL],
        cwd=slurm_repo,
        capture_output=True,
        text=True,
    )
    assert forced.returncode == 0, forced.stderr[-3000:]
    new = [r for r in _accounted("umm-ci-") if r["JobID"] not in before]
    assert sorted(_stage_of(r) for r in new) == [
        "eval_generate",
        "eval_generate",
        "eval_score",
        "eval_summary",
    ]
    RECORD["forcerun"] = {"new_jobs": [r["JobID"] for r in new]}


# --- 8. re-attach after Snakemake dies, never a duplicate job ----------------------------------------
def test_killed_snakemake_reattaches_to_its_job_instead_of_submitting_again(slurm_repo):
    before = {r["JobID"] for r in _accounted("umm-ci-")}
    command = [*PROFILE_COMMAND, "--forcerun", "eval_score", *FAST_POLL]
    first = subprocess.Popen(
        command,
        cwd=slurm_repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    job_id = _wait_for_job("umm-ci-eval_score", "PENDING,RUNNING")
    os.killpg(first.pid, signal.SIGHUP)  # the login session drops
    first.wait(timeout=60)
    state_when_killed = slurm_state.state(job_id)
    assert state_when_killed in slurm_state.ALIVE | {"COMPLETED"}
    began = time.time()
    second = subprocess.run(command, cwd=slurm_repo, capture_output=True, text=True)  # typed again
    assert second.returncode == 0, second.stderr[-3000:]
    log = (slurm_repo / "results/ci/logs/eval_score.none.unified_bench.log").read_text()
    assert f"re-attached to job(s) ['{job_id}']" in log
    new = [r for r in _accounted("umm-ci-") if r["JobID"] not in before]
    assert sorted(_stage_of(r) for r in new) == ["eval_score", "eval_summary"]  # eval_score once
    RECORD["reattach"] = {
        "job_id": job_id,
        "state_when_killed": state_when_killed,
        "second_invocation_seconds": round(time.time() - began, 1),
    }


# --- 4. preemption (USR2 -> checkpoint()) and an external requeue both resume to the same weights ---
def _latest_step(stage_dir: Path) -> int:
    steps = [int(p.name.split("_")[1]) for p in (stage_dir / "checkpoints").glob("step_*")]
    return max(steps, default=0)


def _restarts(job_id: str) -> int:
    return int(re.search(r"\bRestarts=(\d+)", _show_job(job_id)).group(1))


def _wait_until(condition, what: str, timeout: float = 180, interval: float = 0.1) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(what)


def test_preempted_and_requeued_training_resumes_to_the_same_weights(slurm_repo, tmp_path):
    source = slurm_repo / "results" / "ci"
    cores = {"defaults": {"cpus_per_task": 2}}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    reference = decoder_phase_command(source, whole, steps=150, launcher={"kind": "inline", **cores})
    subprocess.run(reference, check=True, capture_output=True, cwd=slurm_repo)

    slurm = {"kind": "slurm", "poll_seconds": 0.5, "defaults": {"cpus_per_task": 2, "timeout_min": 20}}
    command = decoder_phase_command(source, cut, steps=150, launcher=slurm)
    began = time.time()
    launcher = subprocess.Popen(command, cwd=slurm_repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    job_id = _wait_for_job("umm-stage-pretrain_decoder_lowres", "RUNNING")
    _wait_until(lambda: _latest_step(cut) >= 10, "a first checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what Slurm sends before preemption
    _wait_until(lambda: _restarts(job_id) == 1 and "JobState=RUNNING" in _show_job(job_id), "the requeue")
    resumed_at = _latest_step(cut)
    _wait_until(lambda: _latest_step(cut) >= resumed_at + 10, "progress after the requeue")
    requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    assert requeue.returncode == 0, f"the run ended before the external requeue: {requeue.stderr}"
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, output.decode()[-3000:]
    assert _restarts(job_id) == 2
    assert slurm_state.state(job_id) == "COMPLETED"
    a, b = decoder_weights(whole / "final"), decoder_weights(cut / "final")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    RECORD["preemption"] = {
        "job_id": job_id,
        "restarts": 2,
        "seconds": round(time.time() - began, 1),
        "resumed_at_steps": resumed_at,
    }


# --- 6. two nodes x one task follow the one-process loss curve ---------------------------------------
def test_two_nodes_follow_the_one_process_loss_curve(slurm_repo, tmp_path):
    source = slurm_repo / "results" / "ci"
    curves = {}
    for name, launcher in (
        ("one", {"kind": "local", "defaults": {"tasks_per_node": 1, "cpus_per_task": 1}}),
        ("two_nodes", {"kind": "slurm", "poll_seconds": 0.5, "defaults": {"nodes": 2, "cpus_per_task": 1}}),
    ):
        folder = tmp_path / name
        result = subprocess.run(
            decoder_phase_command(source, folder, steps=10, launcher=launcher),
            capture_output=True,
            text=True,
            cwd=slurm_repo,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        provenance = json.loads((folder / "final/provenance.json").read_text())
        curves[name] = [r["loss"] for r in read(folder / "final/metrics.jsonl")]
        if name == "two_nodes":
            assert provenance["world_size"] == 2
            row = slurm_state.accounting([provenance["job_id"]])[provenance["job_id"]]
            assert row["NodeList"] == "n[1-2]"
            RECORD["two_nodes"] = {"job_id": provenance["job_id"], "node_list": row["NodeList"]}
    assert len(curves["one"]) == len(curves["two_nodes"]) == 10
    # 2 gloo processes x micro-batch 4 vs 1 process x 2 accumulation steps: the same global batch
    torch.testing.assert_close(
        torch.tensor(curves["two_nodes"]), torch.tensor(curves["one"]), rtol=1e-4, atol=1e-5
    )
