"""Launcher configuration: where heavy stages run and what they ask the scheduler for."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from workflow_scripts.config.typed import doc


@dataclass(frozen=True, kw_only=True, slots=True)
class Resources:
    """What one stage's job asks for; each field maps to one submitit/sbatch parameter."""

    nodes: int = doc("Nodes (sbatch --nodes).")
    gpus_per_node: int = doc("GPUs per node (sbatch --gpus-per-node).")
    tasks_per_node: int = doc("Processes per node, one per GPU on GPU nodes (sbatch --ntasks-per-node).")
    cpus_per_task: int = doc("CPU cores per process (sbatch --cpus-per-task); torch threads locally.")
    mem_gb: int = doc("Memory per node in GB (sbatch --mem).")
    timeout_min: int = doc("Wall-time limit in minutes (sbatch --time).")
    partition: str | None = doc("Slurm partition.")
    account: str | None = doc("Slurm account.")
    qos: str | None = doc("Slurm QOS.")
    constraint: str | None = doc("Slurm node constraint.")
    max_num_timeout: int = doc(
        "Times a timed-out or preempted job is requeued to resume from its checkpoint."
    )

    def __post_init__(self) -> None:
        if min(self.nodes, self.tasks_per_node, self.cpus_per_task) < 1:
            raise ValueError("nodes, tasks_per_node and cpus_per_task must be >= 1")

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node


@dataclass(frozen=True, kw_only=True, slots=True)
class ResourceOverrides:
    """Per-stage changes to launcher.defaults; unset fields inherit."""

    nodes: int | None = None
    gpus_per_node: int | None = None
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    timeout_min: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    max_num_timeout: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class LauncherConfig:
    kind: Literal["local", "inline", "slurm"] = doc(
        "'local': submitit's local executor (a subprocess per task on this machine); 'inline': in the "
        "rule's own process, one task (debugging); 'slurm': submitit's Slurm executor. The slurm "
        "profile switches this."
    )
    poll_seconds: float = doc("How often a waiting rule polls its job's state.")
    array_parallelism: int = doc(
        "Elements of a job array (e.g. evaluation shards) Slurm runs at once (sbatch --array=0-N%K). "
        "The local executor runs a stage's elements one after another."
    )
    defaults: Resources = doc("Resources of every heavy stage unless overridden.")
    stages: dict[str, ResourceOverrides] = doc(
        "Per-stage overrides, keyed by stage name (e.g. pretrain_decoder, pretrain_encoder)."
    )

    def __post_init__(self) -> None:
        if self.array_parallelism < 1:
            raise ValueError("array_parallelism must be >= 1")

    def resources(self, stage: str) -> Resources:
        override = self.stages.get(stage)
        if override is None:
            return self.defaults
        changes = {
            f.name: getattr(override, f.name)
            for f in dataclasses.fields(override)
            if getattr(override, f.name) is not None
        }
        return dataclasses.replace(self.defaults, **changes)
