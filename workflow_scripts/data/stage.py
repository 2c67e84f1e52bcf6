"""Stage entries of the data build (each runs inside a launcher job)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyarrow.parquet as pq

from workflow_scripts import provenance
from workflow_scripts.data import build as data_build
from workflow_scripts.harness.context import JobContext, JobSpec

log = logging.getLogger(__name__)


def collect(ctx: JobContext) -> dict:
    source = ctx.spec.wildcards["source"]
    count = data_build.collect(ctx.cfg.data, source, ctx.cfg.seed, ctx.output("raw"))
    return {"source": source, "items": count}


def _part(out: Path, rank: int) -> Path:
    return out.with_name(f".{out.name}.part{rank:04d}")


def caption(ctx: JobContext) -> str:
    """Caption this task's share of the items; the launcher's gather step joins the parts."""
    source = ctx.spec.wildcards["source"]
    captioning = ctx.cfg.data.captioning
    # only a model captioner has a device: a rule-based one does not pay ~1 s for importing torch to ask
    models = captioning.draft[source] == "vlm" or captioning.refine == "llm"
    device = f"cuda:{ctx.local_rank}" if models and _cuda() else "cpu"
    rows = data_build.caption(
        ctx.cfg.data.captioning, source, ctx.input("raw"), ctx.cfg.seed, ctx.rank, ctx.world, device
    )
    part = _part(ctx.output("captions"), ctx.rank)
    data_build.write_parquet(part, rows, data_build.CAPTION_SCHEMA)
    return str(part)


def gather_captions(spec: JobSpec, parts: list[str]) -> None:
    rows = []
    for part in parts:
        rows.extend(pq.read_table(part).to_pylist())
    rows.sort(key=lambda r: r["item_id"])
    out = Path(spec.outputs["captions"])
    data_build.write_parquet(out, rows, data_build.CAPTION_SCHEMA)
    for part in parts:
        os.unlink(part)
    failed = sum(r["caption"] is None for r in rows)
    log.info("captions: %d rows (%d without caption) -> %s", len(rows), failed, out)


def build(ctx: JobContext) -> dict:
    raws = [Path(p) for name, p in sorted(ctx.spec.inputs.items()) if name.startswith("raw_")]
    caps = [Path(p) for name, p in sorted(ctx.spec.inputs.items()) if name.startswith("captions_")]
    summary = data_build.build(
        ctx.cfg.data, ctx.cfg.seed, raws, caps, ctx.output("shards"), ctx.output("manifest")
    )
    provenance.write(
        ctx.output("shards") / "provenance.json",
        provenance.record(
            stage="data_build",
            config_hash=ctx.config_hash,
            stage_hash=ctx.view_hash,
            seed=ctx.run_seed,
            inputs={name: p for name, p in ctx.spec.inputs.items()},
            extra={"summary": summary},
        ),
    )
    return summary


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def rl_select(ctx: JobContext) -> dict:
    from workflow_scripts.data.rl_select import select

    summary = select(
        ctx.cfg.rl.data, ctx.cfg.seed, ctx.input("shards"), list(ctx.cfg.data.resolutions), ctx.output("rl")
    )
    return summary
