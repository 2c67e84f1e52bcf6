"""Launcher: the sbatch script for the paper preset, and how jobs return and fail."""

from __future__ import annotations

import re

import pytest

from tests.test_config import PAPER_PATHS
from workflow_scripts.config.loader import parse, resolve
from workflow_scripts.launch.config import Resources
from workflow_scripts.launch.launcher import JobFailedError, run, sbatch_script


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
    lines = _sbatch_lines(
        sbatch_script(tmp_path, cfg.launcher.resources("pretrain_decoder"), "umm-paper-pretrain")
    )
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
    lines = _sbatch_lines(sbatch_script(tmp_path, cfg.launcher.resources("build_tiny_model"), "x"))
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
    from pathlib import Path

    cfg = parse(resolve({"preset": "paper", **PAPER_PATHS}))
    folder = Path("/shared/umm/results/paper/logs/jobs/pretrain_decoder_lowres")  # absolute: as on a cluster
    text = sbatch_script(
        folder, cfg.launcher.resources("pretrain_decoder"), "umm-paper-pretrain_decoder_lowres"
    )
    assert text == (repo / "tests/assets/sbatch_paper_pretrain_decoder.txt").read_text()
