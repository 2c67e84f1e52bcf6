"""What a stage entry function receives: the job's spec and its context (config, view, paths, rank)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workflow_scripts.catalog import stage_view, view_scope
from workflow_scripts.config.loader import digest
from workflow_scripts.config.root import UmmConfig
from workflow_scripts.config.scope import Guard


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


class JobContext:
    """What a stage entry function receives: the typed config as far as its view reaches, that view,
    paths, and its rank.

    ``cfg`` is a read guard (``config/scope.py``) over the typed config: a stage reads only what its view
    in ``catalog.py`` covers (so what its hash re-runs it on); any other read raises. The whole config
    stays with the harness, for the provenance record's config hash and run seed.
    """

    def __init__(
        self, spec: JobSpec, cfg: UmmConfig, plain: dict[str, Any], rank: int, world: int, local_rank: int
    ) -> None:
        self.spec = spec
        self._plain = plain
        self._seed = cfg.seed
        self.cfg: UmmConfig = Guard(cfg, view_scope(plain, spec.stage, **spec.wildcards), spec.stage)  # type: ignore[assignment]
        self.rank = rank
        self.world = world
        self.local_rank = local_rank

    @property
    def view_hash(self) -> str:
        return self.spec.stage_hash

    @property
    def config_hash(self) -> str:
        """The whole resolved config's hash, for provenance."""
        return digest(self._plain)

    @property
    def run_seed(self) -> int:
        """The run's master seed, for provenance (a stage that derives seeds from it has it in its view)."""
        return self._seed

    def view(self) -> dict[str, Any]:
        return stage_view(self._plain, self.spec.stage, **self.spec.wildcards)

    def input(self, name: str) -> Path:
        return Path(self.spec.inputs[name])

    def output(self, name: str) -> Path:
        return Path(self.spec.outputs[name])
