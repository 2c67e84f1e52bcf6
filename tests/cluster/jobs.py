"""Functions the Slurm tests submit as jobs (importable by the job's Python, unlike test-module locals)."""

from __future__ import annotations

import os
import time

import submitit


def where_am_i() -> dict:
    """What a task sees of its allocation."""
    env = submitit.JobEnvironment()
    return {
        "rank": env.global_rank,
        "node": os.environ.get("SLURMD_NODENAME"),
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
        "job_id": env.job_id,
    }


def fail() -> None:
    print("about to fail on purpose", flush=True)
    raise RuntimeError("this job fails on purpose")


def sleep(seconds: float) -> float:
    print(f"sleeping {seconds} s", flush=True)
    time.sleep(seconds)
    return seconds
