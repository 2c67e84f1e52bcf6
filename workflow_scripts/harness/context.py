"""What a stage entry function receives: the job's spec and its context (config, view, paths, rank)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workflow_scripts.catalog import stage_view
from workflow_scripts.config.loader import digest
from workflow_scripts.config.root import UmmConfig


@dataclass(frozen=True)
class JobSpec:
    stage: str
    config: str  # the run's resolved config (JSON)
    stage_hash: str  # what the DAG recorded for this stage's view; checked before running
    wildcards: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    array_index: int | None = None  # this job's element of the stage's job array, if it has one


@dataclass
class JobContext:
    """What a stage entry function receives: the typed config, its own view, paths, and its rank."""

    spec: JobSpec
    cfg: UmmConfig
    plain: dict[str, Any]
    rank: int
    world: int
    local_rank: int

    @property
    def view_hash(self) -> str:
        return self.spec.stage_hash

    @property
    def config_hash(self) -> str:
        return digest(self.plain)

    def view(self) -> dict[str, Any]:
        return stage_view(self.plain, self.spec.stage, **self.spec.wildcards)

    def input(self, name: str) -> Path:
        return Path(self.spec.inputs[name])

    def output(self, name: str) -> Path:
        return Path(self.spec.outputs[name])
