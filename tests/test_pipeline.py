"""End to end: the real Snakemake DAG on the tiny preset, re-runs, kill-and-resume, and 2 processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import duckdb
import pytest
import torch

from tests.conftest import (
    ci_config,
    decoder_phase_command,
    decoder_weights,
    dry_run_job_counts,
    snakemake,
    stage_command,
    write_config,
)
from workflow_scripts.train.metrics import read

pytestmark = pytest.mark.slow


def test_dag_builds_data_and_pretrains_both_models(tiny_dag):
    run = tiny_dag / "results" / "ci"
    with duckdb.connect(str(run / "data/manifest.duckdb"), read_only=True) as con:
        splits = dict(
            con.execute("SELECT split, count(*) FROM images WHERE verdict='kept' GROUP BY split").fetchall()
        )
        reasons = {
            r
            for (r,) in con.execute(
                "SELECT split_part(reason, ':', 1) FROM images WHERE verdict='rejected'"
            ).fetchall()
        }
    assert splits["val"] == 4 and splits["bench"] == 4 and splits["train"] > 30
    assert {"too_small", "caption_too_short", "near_duplicate"} <= reasons  # real photos trip real filters

    encoder = run / "train/pretrain_encoder/final"
    assert (encoder / "model.safetensors").exists() and (encoder / "tokenizer.json").exists()
    for phase in ("lowres", "highres"):
        final = run / f"train/pretrain_decoder_{phase}/final"
        for part in ("transformer", "vae", "scheduler", "projector"):
            assert (final / part / "config.json").exists() or (
                final / part / "scheduler_config.json"
            ).exists()
        previews = json.loads((final / "previews/index.json").read_text())
        assert len(previews) == 2 and (final / "previews" / previews[0]["file"]).exists()
        prov = json.loads((final / "provenance.json").read_text())
        assert prov["stage"] == f"pretrain_decoder/{phase}"
        assert set(prov["inputs"]) == {"decoder", "encoder", "shards"}
        assert prov["packages"]["torch"] and prov["packages"]["diffusers"] and prov["job_id"]
        assert len(read(final / "metrics.jsonl")) == (8 if phase == "lowres" else 6)
    # the high-resolution phase starts from the low-resolution export
    prov = json.loads((run / "train/pretrain_decoder_highres/final/provenance.json").read_text())
    assert prov["inputs"]["decoder"]["path"].endswith("pretrain_decoder_lowres/final")
    for rule in ("data_build", "pretrain_encoder", "pretrain_decoder.lowres", "build_tiny_model.encoder"):
        assert (run / "logs" / f"{rule}.log").stat().st_size > 0
        assert (run / "benchmarks" / f"{rule}.tsv").exists()
    assert any((run / "logs/jobs/pretrain_encoder").glob("*_0_log.err"))


REPORT = {"ingest_run": 1, "report": 1, "report_index": 1}  # the run's ingest and report follow any change


def _rerun(tiny_dag: Path, *extra: str) -> dict[str, int]:
    return dry_run_job_counts(snakemake(tiny_dag, "all", "--dry-run", *extra).stdout)


def test_second_run_is_a_noop_and_edits_rerun_only_dependants(tiny_dag):
    out = snakemake(tiny_dag, "all", "--dry-run").stdout
    assert "Nothing to be done" in out
    upstream = {"build_tiny_model", "data_collect", "data_caption", "eval_items"}
    try:
        # a decoder-pretraining value: that stage and everything downstream of the pretrained decoder;
        # the checkpoint selections re-run too, and what follows them is planned once they have
        rerun = _rerun(tiny_dag, "--config", "pretrain={decoder: {caption_dropout: 0.2}}")
        assert (
            rerun["pretrain_decoder"] == 2 and rerun["rl_coldstart"] == 1 and rerun["select_checkpoint"] >= 1
        )
        assert not (upstream | {"data_build", "pretrain_encoder"}) & set(rerun)
        rerun = _rerun(tiny_dag, "--config", "pretrain={encoder: {loop: {steps: 13}}}")
        assert rerun["pretrain_encoder"] == 1 and rerun["pretrain_decoder"] == 2 and not upstream & set(rerun)
        rerun = _rerun(tiny_dag, "--config", "data={filters: {min_caption_words: 6}}")
        assert rerun["data_build"] == 1 and rerun["data_rl_select"] == 1 and rerun["eval_items"] == 4
        assert not {"build_tiny_model", "data_collect", "data_caption"} & set(rerun)
        # a 2a value: 2a, its selection, and what reads the selected encoder
        rerun = _rerun(tiny_dag, "--config", "rl={encoder: {temperature: 0.9}}")
        assert rerun["rl_encoder"] == 1 and rerun["select_checkpoint"] >= 1
        assert not {"rl_coldstart", "pretrain_decoder", *upstream} & set(rerun)
        # a generation setting of one benchmark: its shards, scores and the summary; nothing upstream
        assert _rerun(tiny_dag, "--config", "eval={geneval: {resolution: 32}}") == {
            "eval_generate": 6,  # every system: 5 UAE variants and UniToken
            "eval_score": 6,
            "eval_summary": 1,
            "ingest_eval": 6,
            **REPORT,
            "all": 1,
        }
        # the seed spread is measured after a run and read only by the report: re-ingest and re-render
        assert _rerun(tiny_dag, "--config", "eval={seed_spread: {unified_bench.reward: 1.5}}") == {
            **REPORT,
            "all": 1,
        }
        # the launcher is not part of any result: switching it re-runs nothing
        assert (
            "Nothing to be done"
            in snakemake(tiny_dag, "all", "--dry-run", "--config", "launcher={kind: inline}").stdout
        )
    finally:
        # dry runs write nothing: the real run's resolved config is still the one its jobs read
        assert "Nothing to be done" in snakemake(tiny_dag, "all", "--dry-run").stdout
    forced = _rerun(tiny_dag, "--forcerun", "rl_coldstart")
    # everything that reads the cold start's selected checkpoint follows it: 2a, both 2b runs, the variants
    assert (forced["rl_coldstart"], forced["rl_encoder"], forced["rl_decoder"]) == (1, 1, 2)
    assert not {"pretrain_decoder", *upstream} & set(forced)


def test_killed_training_resumes_to_the_samedecoder_weights(tiny_dag, tmp_path):
    inline = {"launcher": {"kind": "inline"}}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(
        decoder_phase_command(tiny_dag / "results" / "ci", whole, **inline),
        check=True,
        capture_output=True,
        cwd=tiny_dag,
    )

    command = decoder_phase_command(tiny_dag / "results" / "ci", cut, **inline)
    process = subprocess.Popen(
        command, cwd=tiny_dag, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = cut / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and any(r["step"] >= 12 for r in read(metrics)):
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    checkpoints = sorted(p.name for p in (cut / "checkpoints").glob("step_*"))
    assert checkpoints and checkpoints[-1] < "step_00000040", "the kill must land before the end"
    assert not (cut / "final").exists()

    subprocess.run(command, check=True, capture_output=True, cwd=tiny_dag)
    resumed_from = json.loads((cut / "final/provenance.json").read_text())
    assert resumed_from["stage"] == "pretrain_decoder/lowres"
    a, b = decoder_weights(whole / "final"), decoder_weights(cut / "final")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["loss"] for r in read(whole / "final/metrics.jsonl")] == [
        r["loss"] for r in read(cut / "final/metrics.jsonl")
    ]


def test_two_processes_follow_the_one_process_loss_curve(tiny_dag, tmp_path):
    """2 gloo processes x micro-batch 4 vs 1 process x 2 accumulation steps x 4: same global batch."""
    curves = {}
    for tasks in (1, 2):
        folder = tmp_path / f"tasks{tasks}"
        launcher = {"launcher": {"kind": "local", "defaults": {"tasks_per_node": tasks, "cpus_per_task": 1}}}
        command = decoder_phase_command(tiny_dag / "results" / "ci", folder, steps=10, **launcher)
        result = subprocess.run(command, capture_output=True, text=True, cwd=tiny_dag)
        assert result.returncode == 0, result.stderr[-3000:]
        prov = json.loads((folder / "final/provenance.json").read_text())
        assert prov["world_size"] == tasks
        curves[tasks] = [r["loss"] for r in read(folder / "final/metrics.jsonl")]
    assert len(curves[1]) == len(curves[2]) == 10
    # stated tolerance: gradients are all-reduced in another order, so agreement is to float32 rounding
    torch.testing.assert_close(torch.tensor(curves[2]), torch.tensor(curves[1]), rtol=1e-4, atol=1e-5)


def test_encoder_lora_sft_exports_a_merged_model_and_its_adapter(tiny_dag, tmp_path):
    from workflow_scripts.models.encoder import load_encoder

    source = tiny_dag / "results" / "ci"
    inputs = {"base": source / "models/tiny/encoder", "shards": source / "data/shards"}
    overrides = {
        "launcher": {"kind": "inline"},
        "pretrain": {"encoder": {"method": "lora", "loop": {"steps": 4}}},
    }
    subprocess.run(
        stage_command("pretrain_encoder", tmp_path, inputs, **overrides), check=True, capture_output=True
    )
    final = tmp_path / "final"
    adapter = json.loads((final / "adapter/adapter_config.json").read_text())
    assert adapter["r"] == 8 and "language_model" in adapter["target_modules"]
    base = load_encoder(source / "models/tiny/encoder").model.state_dict()
    tuned = load_encoder(final).model.state_dict()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all("language_model" in k for k in changed)  # LoRA merged into the LLM only
    assert not any("visual" in k for k in changed)


def test_bad_config_fails_at_load_naming_the_key(tmp_path):
    write_config(tmp_path, {"preset": "tiny", "pretrain": {"encoder": {"lopp": {}}}})
    result = snakemake(tmp_path, "all", "--dry-run", check=False)
    assert result.returncode != 0
    assert "pretrain.encoder.lopp" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_decoder_lora_checkpoints_hold_adapters_that_load_over_their_base(tiny_dag, tmp_path):
    from workflow_scripts.models.decoder import load_decoder

    lora = {"launcher": {"kind": "inline"}, "pretrain": {"decoder": {"transformer": "lora"}}}
    command = decoder_phase_command(tiny_dag / "results" / "ci", tmp_path, steps=4, **lora)
    subprocess.run(command, check=True, capture_output=True, cwd=tiny_dag)
    checkpoint = sorted((tmp_path / "checkpoints").glob("step_*"))[-1] / "model"
    assert (checkpoint / "transformer_adapter/adapter_config.json").exists()
    assert not (checkpoint / "vae").exists()  # read from the base decoder when loading
    from_checkpoint = load_decoder(checkpoint).transformer.state_dict()
    final = load_decoder(tmp_path / "final").transformer.state_dict()
    base = load_decoder(
        tiny_dag / "results/ci/models/tiny/decoder", llm_hidden_size=64, projector_hidden_size=8
    )
    assert from_checkpoint.keys() == final.keys()
    for key in final:
        torch.testing.assert_close(from_checkpoint[key], final[key])
    changed = [k for k, v in base.transformer.state_dict().items() if not torch.equal(v, final[k])]
    assert changed and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out", "add_")) for k in changed)


def test_a_results_root_with_a_space_runs_real_stages_with_their_logs_in_place(tmp_path):
    """Every path reaches the shell quoted: a space in the results root neither splits a command nor
    leaves a stray file, and each rule's log is where the layout puts it."""
    write_config(tmp_path, ci_config())
    root = tmp_path / "my results"
    captions = root / "ci/data/captions/synthetic.parquet"
    snakemake(tmp_path, "--config", f"results_root={root}", "--", str(captions))
    assert captions.exists() and (root / "ci/data/raw/synthetic.parquet").exists()
    for rule in ("data_collect.synthetic", "data_caption.synthetic"):
        assert (root / "ci/logs" / f"{rule}.log").exists(), rule
    assert any((root / "ci/logs/jobs").rglob("*_0_log.err"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".snakemake", "config.yaml", "my results"]


def test_a_run_name_with_a_space_is_refused_naming_the_key(tmp_path):
    write_config(tmp_path, ci_config(run_name="space test"))
    result = snakemake(tmp_path, "all", "--dry-run", check=False)
    assert result.returncode != 0
    assert "config key 'run_name' = 'space test' is not a valid name" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()
