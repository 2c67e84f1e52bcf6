"""The evaluation harness end to end on the tiny DAG: every system, every benchmark, selection, shards."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import ci_config, snakemake
from workflow_scripts.config.loader import parse, resolve
from workflow_scripts.eval import generate, geneval_pp, items, score
from workflow_scripts.eval.detectors import PaletteColors, ShapesDetector
from workflow_scripts.eval.geneval import TASKS, ScoringConstants
from workflow_scripts.eval.systems import load_system
from workflow_scripts.models.conditioning import ConditioningSpec

pytestmark = pytest.mark.slow
BENCHES = ("unified_bench", "geneval", "geneval_pp", "mmt")


def test_every_system_has_every_benchmark_traceable_to_samples(tiny_dag):
    run = tiny_dag / "results" / "ci"
    summary = json.loads((run / "eval/summary.json").read_text())
    uae = {"none", "coldstart", "2a", "2b", "2a+2b"}
    assert set(summary["systems"]) == uae | {"unitoken"}  # UniToken: same harness
    for system, benches in summary["systems"].items():
        assert set(benches) == set(BENCHES)
        for bench in BENCHES:
            scores = json.loads((run / f"eval/{system}/{bench}/scores.json").read_text())
            records = pq.read_table(run / f"eval/{system}/{bench}/records.parquet").to_pylist()
            assert records, (system, bench)
            if bench == "unified_bench":
                assert len(records) == 4 and all(Path(tiny_dag / r["output"]).exists() for r in records)
                mean = sum(r["clip"] for r in records) / len(records)
                assert scores["backbones"]["clip"]["avg"] == pytest.approx(mean)
                assert set(scores["backbones"]) == {"clip", "longclip", "dinov2", "dinov3"}
            elif bench == "geneval":
                assert {r["tag"] for r in records} == set(TASKS)
                assert scores["correct_images"] == pytest.approx(
                    sum(r["correct"] for r in records) / len(records)
                )
            elif bench == "geneval_pp":  # one image per item, 3 shapes-world items per tag, judged exactly
                assert [r["tag"] for r in records].count("counting") == 3 and len(records) == 7 * 3
                assert scores["protocol"]["judge"] == geneval_pp.SHAPES_JUDGE
            elif bench == "mmt":
                assert len(records) == 5 * 4 * 4  # tasks x questions x circular rotations
    assert set(summary["ablation_unified_bench_overall"]) == {"none", "coldstart", "2a", "2b", "2a+2b"}
    pairs = {(row["system"], row["baseline"]): row for row in summary["judge"]}
    assert set(pairs) == {("2a+2b", "none"), ("unitoken", "2a+2b")}  # UAE vs baseline, UniToken vs UAE
    for row in pairs.values():
        assert sum(row["judges"]["scene_graph"][k] for k in ("win", "tie", "loss")) == pytest.approx(100.0)


def test_selection_scores_every_saved_checkpoint_on_val(tiny_dag):
    run = tiny_dag / "results" / "ci"
    selection = json.loads((run / "selection/rl_encoder.json").read_text())
    assert selection["split"] == "val" and selection["images"] == 4
    steps = sorted(p.name for p in (run / "train/rl_encoder/checkpoints").glob("step_*"))
    assert [c["step"] for c in selection["candidates"]] == [int(s.split("_")[1]) for s in steps]
    best = max(selection["candidates"], key=lambda c: (c["metric"], c["step"]))
    assert selection["selected"] == best["path"]
    variant = json.loads((run / "variants/2a.json").read_text())
    assert variant["captioner"] == selection["selected"]
    cold = json.loads((run / "selection/rl_coldstart.json").read_text())
    assert variant["decoder"] == cold["selected"]
    for candidate in selection["candidates"]:
        records = (
            run / "selection/rl_encoder" / f"step_{candidate['step']:08d}" / "records.jsonl"
        ).read_text()
        assert len(records.splitlines()) == 4


def test_scorer_and_selection_changes_rerun_only_what_they_feed(tiny_dag):
    from tests.test_pipeline import _rerun

    try:
        rescore = _rerun(tiny_dag, "--config", "eval={detector: {threshold: 0.5}}")
        # 6 systems (5 UAE variants + UniToken) x geneval (GenEval++ is judged, it reads no detector); their
        # ingest, the run's, the report
        assert rescore == {
            "eval_score": 6,
            "eval_summary": 1,
            "ingest_eval": 6,
            "ingest_run": 1,
            "report": 1,
            "report_index": 1,
            "all": 1,
        }
        reselect = _rerun(tiny_dag, "--config", "eval={selection: {metric: clip}}")
        assert reselect.get("select_checkpoint", 0) >= 1
        assert not {"data_build", "pretrain_encoder", "pretrain_decoder", "rl_coldstart", "eval_items"} & set(
            reselect
        )
    finally:
        snakemake(tiny_dag, "all", "--dry-run")


def test_a_benchmark_loads_only_the_system_parts_it_calls_and_generates_the_same(
    tiny_dag, tmp_path, monkeypatch
):
    """eval_generate loads generate.PARTS[bench] of a system (MMT: the captioner, no decoder; GenEval: the
    reader and the decoder, no captioner): same records and images as the whole system."""
    monkeypatch.chdir(tiny_dag)
    run = tiny_dag / "results" / "ci"
    cfg = parse(resolve(ci_config()))

    def system(**parts):
        return load_system(
            run / "variants/2a.json",
            cfg.inference,
            conditioning=ConditioningSpec.of(cfg.models.decoder),
            device=torch.device("cpu"),
            dtype=torch.float32,
            **parts,
        )

    whole = system()
    for bench, absent in (("mmt", ("text_encoder", "decoder")), ("geneval", ("captioner",))):
        only = system(parts=generate.PARTS[bench])
        assert all(getattr(only, part) is None for part in absent), bench
        assert all(getattr(only, part) is not None for part in generate.PARTS[bench]), bench
        outputs = []
        for name, loaded in (("whole", whole), ("only", only)):
            folder = tmp_path / f"{bench}-{name}"
            generate.generate(bench, run / f"eval/items/{bench}", loaded, cfg.eval, 0, folder)
            records = (folder / "records.jsonl").read_text()
            images = {f.name: f.read_bytes() for f in sorted((folder / "images").glob("*.png"))}
            outputs.append((records, images))
        assert outputs[0] == outputs[1], bench


def test_shard_count_does_not_change_any_aggregate(tiny_dag, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_dag)  # system records name models relative to the Snakemake working directory
    run = tiny_dag / "results" / "ci"
    cfg = parse(resolve(ci_config()))
    system = load_system(
        run / "variants/none.json",
        cfg.inference,
        conditioning=ConditioningSpec.of(cfg.models.decoder),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    results = {}
    for shards in (1, 3):
        eval_cfg = replace(cfg.eval, shards=shards)
        for bench in ("geneval", "mmt"):
            folders = []
            for shard in range(shards):
                folder = tmp_path / f"{shards}-{bench}-{shard}"
                generate.generate(bench, run / f"eval/items/{bench}", system, eval_cfg, shard, folder)
                folders.append(folder)
            records = score.load_records(folders)
            if bench == "geneval":
                _, summary = score.generation(
                    records, ShapesDetector(), PaletteColors(), ScoringConstants(), TASKS
                )
            else:
                _, summary = score.multiple_choice(records, circular=True)
            results[(shards, bench)] = (
                summary,
                [{k: v for k, v in r.items() if k != "output"} for r in records],
            )
    for bench in ("geneval", "mmt"):
        assert results[(1, bench)] == results[(3, bench)]
    assert len(items.read(run / "eval/items/geneval")) == len(
        {r["item_id"] for r in results[(1, "geneval")][1]}
    )


def test_official_item_file_is_read_when_given(tmp_path):
    from workflow_scripts.eval.items import build

    official = tmp_path / "evaluation_metadata.jsonl"
    official.write_text(
        json.dumps(
            {
                "tag": "single_object",
                "include": [{"class": "circle", "count": 1}],
                "prompt": "a photo of a circle",
            }
        )
        + "\n"
    )
    cfg = parse(resolve({"eval": {"geneval": {"items_file": str(official)}}}))
    assert build("geneval", cfg.eval, 0, tmp_path, tmp_path / "items") == 1
    (item,) = items.read(tmp_path / "items")
    assert (
        item["prompt"] == "a photo of a circle" and len(item["seeds"]) == cfg.eval.geneval.images_per_prompt
    )
