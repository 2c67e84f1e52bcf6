"""The local cluster as a test module's fixture, and the small job resources the Slurm tests submit."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cluster.slurm import APT, LocalSlurm, missing_tools
from workflow_scripts.launch.config import Resources

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@contextmanager
def running_cluster(directory: Path, record: dict, artifact: str, nodes: int = 2) -> Iterator[LocalSlurm]:
    """A started cluster with SLURM_CONF pointing at it; on exit it is stopped and ``record`` (the
    module's measured figures) is written to ``artifacts/<artifact>``."""
    if missing_tools() or os.geteuid() != 0:
        pytest.fail(
            f"the Slurm tests start a local cluster as root; install it with `{APT}` and run as root, "
            "or deselect these tests with -m 'not slurm'"
        )
    slurm = LocalSlurm(directory, nodes=nodes)
    try:
        slurm.start()
    except Exception:
        slurm.stop()
        raise
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(slurm.conf)
    record["cluster"] = {"bring_up_seconds": round(slurm.bring_up_seconds, 1)}
    try:
        yield slurm
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        record["cluster"]["tear_down_seconds"] = round(slurm.stop(), 1)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / artifact).write_text(json.dumps(record, indent=2))


def small_resources(**changes) -> Resources:
    """One CPU task on one node; timeout above 10 min, where submitit reads a USR2 as preemption."""
    base = {
        "nodes": 1,
        "gpus_per_node": 0,
        "tasks_per_node": 1,
        "cpus_per_task": 1,
        "mem_gb": 1,
        "timeout_min": 20,
        "partition": None,
        "account": None,
        "qos": None,
        "constraint": None,
        "max_num_timeout": 3,
    }
    return Resources(**{**base, **changes})
