"""The stage harness every training stage's entry shares: its folders, its identity, and its provenance."""

from __future__ import annotations

import shutil
from pathlib import Path

from workflow_scripts import provenance
from workflow_scripts.config.loader import digest
from workflow_scripts.fingerprint import fingerprint
from workflow_scripts.harness.context import JobContext
from workflow_scripts.harness.paths import StagePaths


def stage_paths(ctx: JobContext) -> StagePaths:
    """Checkpoints and metrics live beside the exported model, outside Snakemake's outputs, so a failed
    or killed job leaves them for the re-run to resume from."""
    final = ctx.output("model")
    stage_dir = final.parent
    return StagePaths(checkpoints=stage_dir / "checkpoints", metrics=stage_dir / "metrics.jsonl", final=final)


def identity(ctx: JobContext) -> str:
    """Checkpoints are only resumed by a run with the same config view and the same input contents."""
    return digest(
        {"view": ctx.view_hash, "inputs": {k: fingerprint(v) for k, v in sorted(ctx.spec.inputs.items())}}
    )


def finalizer(ctx: JobContext, paths: StagePaths, run_identity: str, extra: dict):
    """Copy the metrics log (and sample triples, if any) into the export; record provenance."""

    def finalize(tmp: Path) -> None:
        shutil.copy(paths.metrics, tmp / "metrics.jsonl")
        samples = paths.checkpoints.parent / "samples"
        if samples.exists():
            shutil.copytree(samples, tmp / "samples")
        provenance.write(
            tmp / "provenance.json",
            provenance.record(
                stage=ctx.spec.stage + "".join(f"/{v}" for v in ctx.spec.wildcards.values()),
                config_hash=ctx.config_hash,
                stage_hash=ctx.view_hash,
                seed=ctx.run_seed,
                inputs=ctx.spec.inputs,
                extra={"identity": run_identity, "world_size": ctx.world, **extra},
            ),
        )

    return finalize
