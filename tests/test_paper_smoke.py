"""The paper preset's smoke run (issue 18): every rule of the paper DAG executed on CPU through the local
launcher, on the real-shape stand-ins (workflow_scripts/tiny/paper_shapes.py) with the smoke overlay
tests/configs/paper_smoke.yaml. Select it alone with ``pytest -m paper_smoke``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.conftest import REPO, dry_run_job_counts, snakemake, write_config
from workflow_scripts.tiny import paper_shapes as ps

RUN = "paper-smoke"


def planned_rules(dry_run_output: str) -> set[str]:
    return set(dry_run_job_counts(dry_run_output))


def finished_rules(log: str) -> set[str]:
    return set(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log))


def test_planned_and_finished_rules_are_read_from_snakemake_output():
    dry = "Job stats:\njob          count\n---------  -------\ndata_collect     1\nall   1\ntotal  2\n"
    assert planned_rules(dry) == {"data_collect", "all"}
    assert finished_rules("Finished jobid: 12 (Rule: eval_score)\nFinished jobid: 3 (Rule: all)") == {
        "eval_score",
        "all",
    }


def test_smoke_overlay_keeps_the_published_shapes_and_cuts_only_cost():
    """The overlay's own promises: decoder phases at 512 and 1024 px (from paper.yaml, untouched),
    gradient accumulation in every training stage, the local launcher without GPUs."""
    from snakemake.utils import update_config

    from workflow_scripts.config.loader import parse, resolve

    overlay = yaml.safe_load(ps.SMOKE_OVERLAY.read_text())
    example = yaml.safe_load((REPO / "paper.example.yaml").read_text())
    stand_ins = ps.config_overrides(ps.SMOKE_OVERLAY.parent)  # any folder: parse() only reads paths
    user: dict = {}
    for layer in (example, stand_ins, overlay):  # merged as Snakemake merges its --configfile layers
        update_config(user, layer)
    cfg = parse(resolve(user))
    assert cfg.preset == "paper" and cfg.launcher.kind == "local"
    assert cfg.launcher.defaults.gpus_per_node == 0
    phases = {p.name: p for p in cfg.pretrain.decoder.phases}
    assert (phases["lowres"].resolution, phases["highres"].resolution) == (512, 1024)
    loops = [cfg.pretrain.encoder.loop, *(p.loop for p in phases.values())]
    loops += [cfg.rl.coldstart.loop, cfg.rl.encoder.loop, cfg.rl.decoder.loop]
    assert cfg.unitoken.enabled  # both recipes' rules run
    loops += [stage.loop for stage in cfg.unitoken.stages]
    for loop in loops:
        assert loop.steps == 2 and loop.accumulation(1) == 2
    # the engines of the paper preset stay: the smoke run exercises them at real shapes
    assert cfg.pretrain.encoder.loop.distributed == "deepspeed"
    assert {p.loop.distributed for p in phases.values()} == {"fsdp"}
    assert cfg.models.decoder.projector_hidden_size == 8192


@pytest.mark.slow
@pytest.mark.paper_smoke  # 1 h 25 min on 2 cores (README): deselected by default (pyproject addopts)
def test_paper_smoke_run_goes_through_every_rule_of_the_paper_dag(paper_stand_ins, tmp_path):
    started = time.perf_counter()
    for name in ps.MODELS:
        paper_stand_ins(name)
    root = paper_stand_ins.root
    ps.write_config(root)
    ps.write_smoke_data(root)
    built = time.perf_counter() - started

    work = tmp_path / "work"
    write_config(work, yaml.safe_load((REPO / "config.yaml").read_text()))
    shutil.copy(REPO / "paper.example.yaml", work / "paper.example.yaml")
    files = [str(root / ps.CONFIG_FILE), str(root / ps.SMOKE_DATA_FILE), str(ps.SMOKE_OVERLAY)]
    configfiles = ["--configfile", "paper.example.yaml", *files]
    plan = snakemake(work, "all", "-n", "--quiet", "rules", *configfiles)
    planned = planned_rules(plan.stdout + plan.stderr)
    assert {"pretrain_decoder", "rl_decoder", "eval_generate", "report"} <= planned

    results = work / "results"
    train = results / RUN / "train"
    started, finished = time.perf_counter(), set()
    try:
        # one DAG, run in passes only to fit a CI disk: a finished full-training stage's resumable
        # checkpoints (full weights + Adam state: ~7.5 GB for the 2-block SD3.5 DiT, ~8 GB for the 1-layer
        # Chameleon-7B) are deleted before the next one starts; its exported model (train/<stage>/final,
        # the rule's output) stays
        stages = ("pretrain_encoder", "pretrain_decoder_lowres", "pretrain_decoder_highres",
                  "unitoken_align", "unitoken_joint", "unitoken_instruct")  # fmt: skip
        targets = [f"results/{RUN}/train/{stage}/final" for stage in stages]  # relative: as the rules'
        for target in [*targets, "all"]:
            result = snakemake(work, target, "--keep-going", *configfiles, timeout=2 * 3600, check=False)
            finished |= finished_rules(result.stdout + result.stderr)
            assert result.returncode == 0, f"snakemake {target} failed:\n{result.stderr[-8000:]}"
            for stage in stages:
                shutil.rmtree(train / stage / "checkpoints", ignore_errors=True)
        ran = time.perf_counter() - started
        check_outputs(results, planned, finished)
        print(f"paper smoke: stand-ins {built:.0f} s, DAG {ran:.0f} s, rules {sorted(finished)}")
        check_decoder_phase_under_fsdp_with_two_processes(
            work, [work / "paper.example.yaml", *files], tmp_path / "fsdp2"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)  # ~15 GB of exports: not kept by pytest's tmp retention


def check_outputs(results, planned: set[str], finished: set[str]) -> None:
    assert planned - finished == set(), f"rules that never ran: {sorted(planned - finished)}"
    assert (results / RUN / "report" / "report.html").stat().st_size > 0
    # the exported decoder's projector is the release's 2048 -> 8192 -> 4096 (Qwen2.5-VL-3B -> SD3.5-L)
    highres = results / RUN / "train" / "pretrain_decoder_highres" / "final"
    projector = json.loads((highres / "projector" / "config.json").read_text())
    assert (projector["in_features"], projector["hidden_features"], projector["out_features"]) == (
        2048,
        8192,
        4096,
    )
    previews = sorted((highres / "previews").glob("[0-9][0-9][0-9].png"))
    assert previews and all(Image.open(p).size == (1024, 1024) for p in previews)


def check_decoder_phase_under_fsdp_with_two_processes(work: Path, configfiles: list, out: Path) -> list:
    """The smoke run's 512-px decoder phase again, on the run's own encoder and shards, under FSDP2 with 2
    local processes (gloo) instead of 1: the same global batch (2 processes x micro-batch 1 instead of 1 x 1
    x 2 accumulation) gives the same losses, and its export loads as a decoder. Returns both loss curves."""
    from workflow_scripts.config.loader import deep_merge
    from workflow_scripts.dag import Run
    from workflow_scripts.launch.plan import user_config
    from workflow_scripts.models.decoder import load_decoder

    user = deep_merge(
        user_config([str(f) for f in configfiles], [], base=work / "config.yaml"),
        {
            "results_root": str(out / "results"),
            "launcher": {"defaults": {"tasks_per_node": 2, "cpus_per_task": 1}},
        },
    )
    run = Run.load(user)
    source = work / "results" / RUN
    inputs = {
        "decoder": Path(run.cfg.models.decoder.path),
        "encoder": source / "train" / "pretrain_encoder" / "final",
        "shards": source / "data" / "shards",
    }
    command = run.launch_command("pretrain_decoder", {"phase": "lowres"}, inputs, {"model": out / "final"})
    result = subprocess.run(command, capture_output=True, text=True, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    provenance = json.loads((out / "final" / "provenance.json").read_text())
    assert provenance["world_size"] == 2
    curves = [
        [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
        for folder in (source / "train" / "pretrain_decoder_lowres" / "final", out / "final")
    ]
    assert len(curves[0]) == len(curves[1]) == 2
    # the engines' bar (tests/test_engines.py); measured here: equal, then 1.5e-7 apart (bf16 autocast,
    # the same samples reduced in a different order)
    assert curves[1] == pytest.approx(curves[0], rel=1e-4)
    load_decoder(out / "final")
    return curves
