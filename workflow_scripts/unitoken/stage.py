"""UniToken's stage entries: VQ tokenizer training, pre-tokenisation (a job array), the three training
stages, and the system record the benchmarks read. The tasks live in ``vq_training``, ``pretokenize``
and ``training``, as RL's live beside ``rl/stage.py``."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from workflow_scripts import atomic
from workflow_scripts.data.build import write_parquet
from workflow_scripts.data.shards import ShardDataset
from workflow_scripts.harness.context import JobContext, JobSpec
from workflow_scripts.harness.stage import finalizer, identity, stage_paths
from workflow_scripts.seeding import derive_seed, seed_everything
from workflow_scripts.train.batches import BatchPlan
from workflow_scripts.unitoken import records as token_files

# The model stack (torch, transformers: seconds of import) is imported inside the entries that train
# or tokenize: the system record (unitoken_system) and the launcher's gather step need none of it
# (tests/test_job_overhead.py).

log = logging.getLogger(__name__)


def train_vq(ctx: JobContext) -> dict:
    from workflow_scripts.train.loop import train
    from workflow_scripts.unitoken.vq import VQTokenizer, vq_config
    from workflow_scripts.unitoken.vq_training import VQTraining, reconstruction_quality

    cfg = ctx.cfg.unitoken
    spec = cfg.models.tiny_vq
    seed_everything(derive_seed(ctx.cfg.seed, "unitoken_vq", "init"))
    tokenizer = VQTokenizer(vq_config(spec))
    images = ShardDataset(ctx.input("shards"), "train", spec.resolution)
    loop = cfg.vq_train.loop
    plan = BatchPlan(
        len(images), loop.batch_size, loop.micro_batch_size, derive_seed(ctx.cfg.seed, "unitoken_vq")
    )
    task = VQTraining(tokenizer, images, plan, cfg.vq_train.commitment)
    paths = stage_paths(ctx)
    run_identity = identity(ctx)

    def finalize(tmp: Path) -> None:
        quality = reconstruction_quality(VQTokenizer.from_pretrained(tmp), ctx.input("shards"), tmp)
        atomic.write_json(tmp / "reconstruction.json", quality)
        finalizer(ctx, paths, run_identity, quality)(tmp)

    summary = train(task, loop, paths, identity=run_identity, finalize=finalize)
    return {**summary, **json.loads((paths.final / "reconstruction.json").read_text())}


def pretokenize(ctx: JobContext) -> dict:
    """Shard k: work units k, k + shards, ...; each image VQ-encoded once; bad records logged and skipped."""
    from workflow_scripts.unitoken.pretokenize import encoded, units
    from workflow_scripts.unitoken.sequence import Layout, RecordError
    from workflow_scripts.unitoken.vq import VQTokenizer

    cfg = ctx.cfg.unitoken
    shard, shards = ctx.spec.array_index or 0, cfg.pretokenize.shards
    out = ctx.output("index").parent
    layout = Layout.from_dirs(ctx.input("lm"), ctx.input("vision"))
    vq = VQTokenizer.from_pretrained(ctx.input("vq"))
    rows, rejected = [], []
    for unit in units(cfg.pretokenize, ctx.input("shards"), vq.config.resolution)[shard::shards]:
        done: dict = {}  # images the unit's records share
        for candidate in unit():
            try:
                images = [encoded(load, done, vq) for load in candidate["images"]]
                input_ids, labels = layout.encode(candidate["turns"], [codes for _, codes in images])
                if len(input_ids) > cfg.pretokenize.max_length:
                    raise RecordError(f"{len(input_ids)} tokens > max_length {cfg.pretokenize.max_length}")
                if not any(turn.get("from") == "gpt" for turn in candidate["turns"]):
                    raise RecordError("nothing to learn: no gpt turn")
            except RecordError as err:
                rejected.append({"record_id": candidate["record_id"], "reason": str(err)})
                log.warning("rejected %s: %s", candidate["record_id"], err)
                continue
            rows.append(
                {
                    "record_id": candidate["record_id"],
                    "source": candidate["source"],
                    "task": candidate["task"],
                    "input_ids": input_ids,
                    "labels": labels,
                    "images": [png for png, _ in images],
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(token_files.shard_file(out, shard), rows, token_files.SCHEMA)
    atomic.write_text(token_files.rejected_file(out, shard), "".join(json.dumps(r) + "\n" for r in rejected))
    return {
        "shard": shard,
        "index": [
            {
                "record_id": r["record_id"],
                "shard": shard,
                "row": n,
                "length": len(r["input_ids"]),
                "source": r["source"],
                "task": r["task"],
            }
            for n, r in enumerate(rows)
        ],
        "rejected": rejected,
    }


def gather_pretokenized(spec: JobSpec, results: list[dict]) -> None:
    index = [row for r in sorted(results, key=lambda r: r["shard"]) for row in r["index"]]
    rejected = [row for r in results for row in r["rejected"]]
    out = Path(spec.outputs["index"])
    write_parquet(out, index, token_files.INDEX_SCHEMA)
    atomic.write_json(
        out.parent / "summary.json",
        {
            "records": len(index),
            "tokens": sum(r["length"] for r in index),
            "by_task": dict(Counter(r["task"] for r in index)),
            "rejected": len(rejected),
            "rejected_by_reason": dict(Counter(r["reason"].split(":")[0] for r in rejected)),
        },
    )


def train_stage(ctx: JobContext) -> dict:
    from workflow_scripts.train.loop import train
    from workflow_scripts.unitoken.model import UniToken
    from workflow_scripts.unitoken.training import UniTokenTraining
    from workflow_scripts.unitoken.vq import VQTokenizer

    name = ctx.spec.wildcards["unitoken_stage"]
    cfg = ctx.cfg.unitoken
    (stage,) = [s for s in cfg.stages if s.name == name]
    seed_everything(derive_seed(ctx.cfg.seed, "unitoken", name, "init"))
    if "start" in ctx.spec.inputs:
        model = UniToken.from_pretrained(ctx.input("start"))
    else:  # the first stage: the published LM and vision tower, a fresh adapter, our VQ encoder
        model = UniToken.assemble(ctx.input("lm"), ctx.input("vision"))
        model.lm.model.vqmodel.load_state_dict(
            VQTokenizer.from_pretrained(ctx.input("vq")).vqvae.state_dict()
        )
    records = token_files.TokenRecords(ctx.input("tokens").parent, stage.tasks)
    plan = BatchPlan(
        len(records),
        stage.loop.batch_size,
        stage.loop.micro_batch_size,
        derive_seed(ctx.cfg.seed, "unitoken", name),
    )
    task = UniTokenTraining(stage, model, records, plan, cfg.z_loss)
    paths = stage_paths(ctx)
    run_identity = identity(ctx)
    extra = {"records": len(records), "tasks": stage.tasks}
    summary = train(
        task, stage.loop, paths, identity=run_identity, finalize=finalizer(ctx, paths, run_identity, extra)
    )
    return {**summary, **extra}


# what the report shows per system (issue 17): UniToken reads and draws with its own LM
PROTOCOL = {
    "reader": "own LM (VQ codes + SigLIP features)",
    "coldstart": "none (UniToken's align / joint / instruct stages)",
    "conditioning": "released Lumina-mGPT image layout: grid sizes, rows + new-line, CFG from image start",
}


def unitoken_system(ctx: JobContext) -> dict:
    """The record the benchmarks load: UniToken after its last stage, with the VQ tokenizer's decoder."""
    record = {
        "variant": "unitoken",
        "family": "unitoken",
        "model": str(ctx.input("model")),
        "vq": str(ctx.input("vq")),
        "config_hash": ctx.config_hash,
        "protocol": PROTOCOL,
    }
    atomic.write_json(ctx.output("system"), record)
    return record
