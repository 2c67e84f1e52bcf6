"""Stage entries of the evaluation harness (each runs inside a launcher job)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from workflow_scripts import atomic, provenance
from workflow_scripts.config.loader import digest
from workflow_scripts.eval import items, judge, learning
from workflow_scripts.eval.geneval import TASKS, ScoringConstants
from workflow_scripts.eval.geneval_pp import ShapesJudge
from workflow_scripts.fingerprint import code_digest, fingerprint
from workflow_scripts.harness.context import JobContext, JobSpec
from workflow_scripts.harness.device import job_device, place, spread_device_map
from workflow_scripts.layout import RunLayout

# The model stack (torch, transformers, diffusers, peft: seconds of import) is imported inside the
# functions that load models: eval_items, eval_system, eval_summary, a scene-graph eval_judge and the
# launcher's gather step use none of it (tests/test_job_overhead.py).
if TYPE_CHECKING:
    from workflow_scripts.eval.systems import System
    from workflow_scripts.unitoken.system import UniTokenSystem

log = logging.getLogger(__name__)


def _system(ctx: JobContext, record, parts: tuple[str, ...] | None = None) -> System | UniTokenSystem:
    """The system a variant record names: a UAE-family captioner + decoder (those of ``parts`` only,
    default all), or one UniToken model."""
    from workflow_scripts.eval.systems import UAE_PARTS, load_system
    from workflow_scripts.models.conditioning import ConditioningSpec
    from workflow_scripts.unitoken.system import load_unitoken_system

    device = job_device(ctx.local_rank)
    dtype = ctx.cfg.models.torch_dtype(device)
    record = json.loads(Path(record).read_text()) if not isinstance(record, dict) else record
    if record.get("family") == "unitoken":
        return load_unitoken_system(record, ctx.cfg.unitoken, device=device, dtype=dtype)
    return load_system(
        record,
        ctx.cfg.inference,
        conditioning=ConditioningSpec.of(ctx.cfg.models.decoder),
        device=device,
        dtype=dtype,
        parts=UAE_PARTS if parts is None else parts,
    )


def _backbones(ctx: JobContext):
    from workflow_scripts.reward.backbones import load_backbones, reward_backbone_inputs

    device = job_device(ctx.local_rank)
    return load_backbones(
        reward_backbone_inputs(ctx.spec.inputs),
        ctx.cfg.eval.unified_bench.backbones,
        ctx.cfg.models.torch_dtype(device),
        device,
    )


def eval_items(ctx: JobContext) -> dict:
    bench = ctx.spec.wildcards["bench"]
    count = items.build(
        bench,
        ctx.cfg.eval,
        ctx.cfg.seed,
        ctx.input("shards"),
        ctx.output("item_set"),
    )
    return {"bench": bench, "items": count}


def eval_system(ctx: JobContext) -> dict:
    """An external baseline's record, in the same form as an ablation variant's."""
    name = ctx.spec.wildcards["external"]
    spec = ctx.cfg.eval.systems[name]
    if spec.kind == "uae-release":
        from workflow_scripts.models.release import ROLE, check_layout

        release = str(check_layout(spec.path, f"eval.systems.{name}.path").resolve())
        # one LLM captions and reads; the release's own conditioning, whatever models.decoder says
        record = {"variant": name, "kind": spec.kind, "release": release, "config_hash": ctx.config_hash}
        protocol = {"reader": "captioner", "conditioning": "release", "conditioning_role": ROLE}
    else:
        record = {
            "variant": name,
            "captioner": spec.captioner,
            "text_encoder": spec.text_encoder,
            "decoder": spec.decoder,
            "config_hash": ctx.config_hash,
        }
        same = spec.text_encoder is not None and spec.text_encoder == spec.captioner
        protocol = {
            "reader": "captioner" if same else "separate",
            "conditioning": ctx.cfg.models.decoder.conditioning,
        }
    record["protocol"] = protocol
    atomic.write_json(ctx.output("system"), record)
    return record


def eval_generate(ctx: JobContext) -> dict:
    """One shard of a (system, benchmark)'s generations. A shard finished by an earlier attempt with the
    same config view, inputs and code is kept, so a rerun after one shard failed redoes only that one."""
    from workflow_scripts.eval import generate

    system_name, bench = ctx.spec.wildcards["system"], ctx.spec.wildcards["bench"]
    shard = ctx.spec.array_index or 0
    out = RunLayout.of(ctx.cfg).eval_shard(system_name, bench, shard)
    record = json.loads(ctx.input("system").read_text())
    key = _shard_key(ctx, record, shard)
    done = out / "key.txt"
    if done.is_file() and done.read_text() == key:
        count = sum(1 for line in (out / "records.jsonl").read_text().splitlines() if line.strip())
        log.info(
            "%s %s shard %d: kept from an earlier attempt (%d records)", system_name, bench, shard, count
        )
        return {"shard": shard, "records": count, "path": str(out), "kept": True}
    system = _system(ctx, record, generate.PARTS[bench])
    count = generate.generate(bench, ctx.input("item_set"), system, ctx.cfg.eval, shard, out, key=key)
    return {"shard": shard, "records": count, "path": str(out), "kept": False}


def _shard_key(ctx: JobContext, record: dict, shard: int) -> str:
    from workflow_scripts.eval.systems import MODEL_PARTS

    models = {part: fingerprint(record[part]) for part in MODEL_PARTS if part in record}
    return digest(
        {
            "view": ctx.view_hash,
            "shard": shard,
            "items": fingerprint(ctx.input("item_set")),
            "models": models,
            "code": code_digest(),
        }
    )


def gather_generated(spec: JobSpec, results: list[dict]) -> None:
    """Written once every shard of the array has finished: the shard list eval_score reads."""
    shards = sorted(results, key=lambda r: r["shard"])
    atomic.write_json(
        Path(spec.outputs["generated"]),
        {
            "shards": [r["path"] for r in shards],
            "records": sum(r["records"] for r in shards),
            "kept": [r["shard"] for r in shards if r["kept"]],
        },
    )


def _records_table(records: list[dict]) -> pa.Table:
    plain = [{k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()} for r in records]
    return pa.Table.from_pylist(plain)


def eval_score(ctx: JobContext) -> dict:
    from workflow_scripts.eval import score
    from workflow_scripts.eval.detectors import ClipColors, PaletteColors, load_detector, scoring_protocol

    bench, system = ctx.spec.wildcards["bench"], ctx.spec.wildcards["system"]
    shards = [Path(p) for p in json.loads(ctx.input("generated").read_text())["shards"]]
    records = score.load_records(shards)
    cfg = ctx.cfg.eval
    if bench == "unified_bench":
        item_set = ctx.input("item_set")
        records, summary = score.unified_bench(records, item_set, _backbones(ctx))
        summary.update(score.reconstruction_reward(records, dict(ctx.cfg.rl.rewards.reconstruction.alphas)))
        records, checks = learning.unified_bench(
            records, items.read(item_set), item_set / "images", lambda: _autoencoder(ctx)
        )
        summary.update(checks)
        summary["protocol"] = items.score_protocol(item_set)
    elif bench == "geneval_pp":
        item_set = ctx.input("item_set")
        records, summary = score.geneval_pp_verdicts(
            records, items.read(item_set), _geneval_pp_judge(ctx), items.protocol(item_set)
        )
    elif bench == "geneval":
        device = job_device(ctx.local_rank)
        detector_cfg = cfg.detector
        classes = tuple(sorted({c["class"] for r in records for c in json.loads(r["metadata"])["include"]}))
        detector = load_detector(detector_cfg, classes, device)
        colors = (
            PaletteColors()
            if detector_cfg.color == "palette"
            else ClipColors(str(ctx.input("reward_clip")), device)
        )
        constants = ScoringConstants(
            detector_cfg.threshold,
            detector_cfg.counting_threshold,
            detector_cfg.max_objects,
            detector_cfg.max_overlap,
        )
        records, summary = score.generation(records, detector, colors, constants, TASKS)
        summary["protocol"] = items.score_protocol(ctx.input("item_set"), scoring_protocol(detector_cfg))
    else:
        records, summary = score.multiple_choice(records, cfg.mmt.circular, _mmt_judge(ctx))
    sink = pa.BufferOutputStream()
    pq.write_table(_records_table(records), sink)
    atomic.write_bytes(ctx.output("records"), sink.getvalue().to_pybytes())
    result = {
        "system": system,
        "benchmark": bench,
        **summary,
        "provenance": provenance.record(
            stage=f"eval_score/{system}/{bench}",
            config_hash=ctx.config_hash,
            stage_hash=ctx.view_hash,
            seed=ctx.run_seed,
            inputs={},
        ),
    }
    atomic.write_json(ctx.output("scores"), result)
    return {k: v for k, v in summary.items() if k != "backbones"}


def _autoencoder(ctx: JobContext):
    """The scored system's own autoencoder (the checker's ceiling); None where the DAG gave no system
    record (the ceiling is then not measured)."""
    if "system" not in ctx.spec.inputs:
        return None
    device = job_device(ctx.local_rank)
    record = json.loads(ctx.input("system").read_text())
    return learning.system_autoencoder(record, device, ctx.cfg.models.torch_dtype(device))


def _geneval_pp_judge(ctx: JobContext):
    """The local VLM at eval.geneval_pp.judge_path, or the shapes world's exact judge."""
    path = ctx.cfg.eval.geneval_pp.judge_path
    if not path:
        return ShapesJudge()
    from workflow_scripts.eval.vlm_judge import VLMJudge

    device = job_device(ctx.local_rank)
    return VLMJudge(path, device, ctx.cfg.models.torch_dtype(device))


def _mmt_judge(ctx: JobContext):
    path = ctx.cfg.eval.mmt.judge_path
    if not path:
        return None
    from workflow_scripts.eval.mmt import LETTERS
    from workflow_scripts.models.encoder import load_encoder

    device = job_device(ctx.local_rank)
    encoder = load_encoder(
        path,
        key="eval.mmt.judge_path",
        dtype=ctx.cfg.models.torch_dtype(device),
        device_map=spread_device_map(),
    )
    encoder.model = place(encoder.model, device)

    def pick(question: str, answer: str, options: list[str]) -> str | None:
        listing = "; ".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
        prompt = (
            f"Question: {question}\nOptions: {listing}\nAnswer given: {answer}\n"
            "Which option letter does the answer choose? Reply with the letter only, or Z if none."
        )
        tokens = encoder.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        ).to(encoder.model.device)
        out = encoder.model.generate(**tokens, max_new_tokens=4, do_sample=False)
        text = encoder.tokenizer.decode(
            out[0, tokens["input_ids"].shape[1] :], skip_special_tokens=True
        ).strip()
        return text[:1] if text[:1] in LETTERS[: len(options)] else None

    return pick


def eval_judge(ctx: JobContext) -> dict:
    first, second = ctx.spec.wildcards["first"], ctx.spec.wildcards["second"]
    a = {r["item_id"]: r for r in pq.read_table(ctx.input("first")).to_pylist()}
    b = {r["item_id"]: r for r in pq.read_table(ctx.input("second")).to_pylist()}
    bench_items = {i["item_id"]: i for i in items.read(ctx.input("item_set"))}
    rows, verdicts = {}, []
    for name, backend in ctx.cfg.eval.judge.judges.items():
        judge_fn = (
            judge.scene_graph_judge(ctx.cfg.eval.judge.margin)
            if backend == "scene_graph"
            else judge.VLMJudge(backend, job_device(ctx.local_rank), ctx.cfg.models)
        )
        outcomes = []
        for item_id in sorted(set(a) & set(b)):
            meta = bench_items[item_id]["meta"]
            if backend == "scene_graph" and "scene" not in meta:
                continue  # the exact judge needs a scene graph (synthetic images only)
            picture = ctx.input("item_set") / "images" / bench_items[item_id]["image"]
            image = Image.open(picture).convert("RGB")
            forward, backward, final = judge.compare(
                judge_fn, image, meta, a[item_id]["caption"], b[item_id]["caption"]
            )
            outcomes.append(final)
            verdicts.append(
                {
                    "judge": name,
                    "item_id": item_id,
                    "forward": forward,
                    "backward": backward,
                    "verdict": final,
                }
            )
        rows[name] = judge.summarize(outcomes)
    result = {
        "system": first,
        "baseline": second,
        "judges": rows,
        "mean": judge.mean_row(rows),
        "verdicts": verdicts,
    }
    atomic.write_json(ctx.output("judgement"), result)
    return {"mean": result["mean"]}


def eval_summary(ctx: JobContext) -> dict:
    """Every system's headline numbers and the ablation table, from the scored outputs."""
    scores = [
        json.loads(Path(p).read_text()) for k, p in sorted(ctx.spec.inputs.items()) if k.startswith("scores_")
    ]
    judgements = [
        json.loads(Path(p).read_text()) for k, p in sorted(ctx.spec.inputs.items()) if k.startswith("judge_")
    ]
    table: dict[str, dict] = {}
    for s in scores:
        entry = {"overall": s["overall"]}
        if s["benchmark"] == "unified_bench":
            entry.update({k: v["avg"] for k, v in s["backbones"].items()})
        else:
            entry.update(s.get("per_task", {}))
        table.setdefault(s["system"], {})[s["benchmark"]] = entry
    ablation = {
        name: table[name]["unified_bench"]["overall"]
        for name in ctx.cfg.rl.variants
        if "unified_bench" in table.get(name, {})
    }
    summary = {
        "systems": table,
        "ablation_unified_bench_overall": ablation,
        "judge": [{k: j[k] for k in ("system", "baseline", "judges", "mean")} for j in judgements],
    }
    atomic.write_json(ctx.output("summary"), summary)
    return {"systems": len(table)}


def select_checkpoint(ctx: JobContext) -> dict:
    from workflow_scripts.eval import selection

    stage = ctx.spec.wildcards["rl_stage"]
    final = ctx.input("final")
    inputs = ctx.spec.inputs

    def builder(path: Path):
        def build() -> System:
            # a part the DAG gave no partner for is the candidate itself (dag/rl.py selection_inputs)
            record = {
                "variant": f"{stage}@{path.parent.name}",
                **{part: inputs.get(part, str(path)) for part in ("captioner", "text_encoder", "decoder")},
            }
            return _system(ctx, record)

        return build

    built = [(step, path, builder(path)) for step, path in selection.candidates(final)]
    result = selection.select(
        stage,
        built,
        ctx.cfg.eval,
        ctx.input("shards"),
        _backbones(ctx),
        ctx.cfg.seed,
        ctx.output("selection").with_suffix(""),
    )
    atomic.write_json(ctx.output("selection"), result)
    return {"selected": result["selected"], "step": result["selected_step"]}
