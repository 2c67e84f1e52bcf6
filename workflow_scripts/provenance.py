"""Provenance records: what produced an artifact (code, config, packages, seed, inputs, jobs)."""

from __future__ import annotations

import getpass
import os
import platform
import socket
import subprocess
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from workflow_scripts import atomic
from workflow_scripts.fingerprint import fingerprint

TRACKED_PACKAGES = (
    "torch",
    "torchvision",
    "transformers",
    "diffusers",
    "peft",
    "accelerate",
    "open_clip_torch",
    "timm",
    "snakemake",
    "submitit",
    "duckdb",
    "numpy",
    "pillow",
    "umm-pipeline",
)

_REPO = Path(__file__).resolve().parent.parent


def git_state(repo: Path = _REPO) -> dict[str, Any]:
    def run(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def record(
    *,
    stage: str,
    config_hash: str,
    stage_hash: str,
    seed: int,
    inputs: Mapping[str, str | os.PathLike],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance of one stage output; inputs are fingerprinted by content."""
    return {
        "stage": stage,
        "config_hash": config_hash,
        "stage_hash": stage_hash,
        "seed": seed,
        "git": git_state(),
        "packages": package_versions(),
        "inputs": {name: {"path": str(p), "fingerprint": fingerprint(p)} for name, p in inputs.items()},
        "host": socket.gethostname(),
        "user": getpass.getuser(),
        "python": platform.python_version(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "job_id": _job_id(),
        "created_unix": time.time(),
        **(dict(extra) if extra else {}),
    }


def _job_id() -> str | None:
    try:
        import submitit

        return str(submitit.JobEnvironment().job_id)
    except (ImportError, RuntimeError):
        return None


def write(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    atomic.write_json(path, dict(data))
