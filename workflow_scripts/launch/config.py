"""Launcher configuration: where heavy stages run and what they ask the scheduler for."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from workflow_scripts.config.typed import doc
from workflow_scripts.harness.footprint import Footprint


@dataclass(frozen=True, kw_only=True, slots=True)
class Resources:
    """What one stage's job asks for; each field maps to one submitit/sbatch parameter."""

    nodes: int = doc("Nodes (sbatch --nodes).")
    gpus_per_node: int = doc("GPUs per node (sbatch --gpus-per-node).")
    tasks_per_node: int = doc("Processes per node, one per GPU on GPU nodes (sbatch --ntasks-per-node).")
    cpus_per_task: int = doc("CPU cores per process (sbatch --cpus-per-task); torch threads locally.")
    mem_gb: int = doc(
        "Memory per node in GB (sbatch --mem) of a job without GPUs, or of any job when set in "
        "launcher.stages.<stage>."
    )
    mem_gb_per_gpu: int | None = doc(
        "Memory per GPU in GB: a job with GPUs asks for mem_gb_per_gpu x gpus_per_node per node, so a "
        "one-GPU job never claims a whole node's memory; null: mem_gb for every job.",
        default=None,
    )
    timeout_min: int = doc("Wall-time limit in minutes (sbatch --time).")
    partition: str | None = doc("Slurm partition.")
    account: str | None = doc("Slurm account.")
    qos: str | None = doc("Slurm QOS.")
    constraint: str | None = doc("Slurm node constraint.")
    max_num_timeout: int = doc(
        "Times a timed-out job is requeued to resume from its checkpoint (preemptions are not counted)."
    )

    def __post_init__(self) -> None:
        if min(self.nodes, self.tasks_per_node, self.cpus_per_task) < 1:
            raise ValueError("nodes, tasks_per_node and cpus_per_task must be >= 1")
        if self.mem_gb < 1 or (self.mem_gb_per_gpu is not None and self.mem_gb_per_gpu < 1):
            raise ValueError("mem_gb and mem_gb_per_gpu must be >= 1")

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
    mem_gb_per_gpu: int | None = None
    timeout_min: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    max_num_timeout: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class CostConfig:
    """How projected FLOPs become GPU-hours (``python -m workflow_scripts.cost``, the report's projection)."""

    peak_tflops: float = doc("Dense bf16 peak of one GPU in TFLOP/s (H800 SXM: 989).")
    mfu: float = doc("Model FLOP utilisation assumed for every stage: sustained / peak throughput (0-1].")
    folder_images: int | None = doc(
        "Images in data.sources.folder, which the captioning projection needs (the folder is not read "
        "when planning; paper: 700K); null: the folder's captioning is left out of the projection.",
        default=None,
    )

    def __post_init__(self) -> None:
        if self.peak_tflops <= 0 or not 0 < self.mfu <= 1:
            raise ValueError("launcher.cost: peak_tflops must be > 0 and mfu in (0, 1]")
        if self.folder_images is not None and self.folder_images < 0:
            raise ValueError("launcher.cost.folder_images must be >= 0 (or null)")


@dataclass(frozen=True, kw_only=True, slots=True)
class LauncherConfig:
    kind: Literal["local", "inline", "slurm"] = doc(
        "'local': submitit's local executor (a subprocess per task on this machine); 'inline': in the "
        "rule's own process, one task (debugging); 'slurm': submitit's Slurm executor. The slurm "
        "profile switches this."
    )
    poll_seconds: float = doc(
        "Longest interval between two polls of a waiting rule's jobs (one scheduler query for all of "
        "them); polling starts at 1 s on Slurm (0.05 s locally) and backs off to a tenth of the time "
        "waited, up to this."
    )
    array_parallelism: int = doc(
        "Elements of a job array (e.g. evaluation shards) Slurm runs at once (sbatch --array=0-N%K). "
        "The local executor runs a stage's elements one after another."
    )
    defaults: Resources = doc(
        "The cluster and what a training stage gets: nodes, GPUs and processes per node, CPUs, memory, "
        "time. Every stage's footprint in the stage catalog (workflow_scripts/catalog.py) shapes these: "
        "one process, one GPU, one node, one process per node, or all of it."
    )
    stages: dict[str, ResourceOverrides] = doc(
        "Per-stage overrides over the footprint-shaped defaults, keyed by stage name (e.g. "
        "data_build: {mem_gb: 256}); `python -m workflow_scripts.launch.plan` prints the result."
    )
    cost: CostConfig = doc(
        "The GPU and utilisation the cost projection assumes (`python -m workflow_scripts.cost`)."
    )

    def __post_init__(self) -> None:
        if self.array_parallelism < 1:
            raise ValueError("array_parallelism must be >= 1")

    def resources(self, stage: str, footprint: Footprint) -> Resources:
        """The stage's resources: ``launcher.defaults`` shaped by the stage's footprint (from the catalog:
        ``catalog.resources``), then its ``launcher.stages`` entry. ``mem_gb`` is already what sbatch gets:
        a stage's own ``mem_gb`` wins, else GPU jobs ask for ``mem_gb_per_gpu`` x GPUs, else ``mem_gb``."""
        override = self.stages.get(stage) or ResourceOverrides()
        changes = {
            f.name: getattr(override, f.name)
            for f in dataclasses.fields(override)
            if getattr(override, f.name) is not None
        }
        shape = footprint.shape(self.defaults.nodes, self.defaults.gpus_per_node)
        shaped = dataclasses.replace(self.defaults, **shape)
        merged = dataclasses.replace(shaped, **changes)
        if override.mem_gb is None and merged.mem_gb_per_gpu and merged.gpus_per_node:
            merged = dataclasses.replace(merged, mem_gb=merged.mem_gb_per_gpu * merged.gpus_per_node)
        return merged
