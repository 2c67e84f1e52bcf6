"""The cost projection (issue 18, item 3): FLOPs counted on meta-device layers follow the 2*m*n*k
convention (checked against hand sums), scale by depth / steps / MFU into GPU-hours as computed by hand,
the command prints every costed stage of the paper plan with a total, and the report shows the table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from workflow_scripts.cost import flops as F
from workflow_scripts.cost import project as C
from workflow_scripts.tiny import published as P

ROOT = Path(__file__).resolve().parents[1]


def _paper_plain(**extra) -> dict:
    """The paper preset as paper.example.yaml resolves it (every model path set, none read)."""
    from workflow_scripts.config.loader import resolve
    from workflow_scripts.launch.plan import user_config

    return resolve({**user_config([str(ROOT / "paper.example.yaml")], [], ROOT / "config.yaml"), **extra})


def test_linear_is_two_m_n_k():
    assert F.linear(5, 7, 11) == 2 * 5 * 7 * 11


def test_llm_layer_is_the_hand_sum_of_its_matmuls():
    hidden, inter, heads, kv, seq = 64, 96, 4, 2, 10
    head_dim = hidden // heads
    projections = 2 * seq * hidden * (hidden + 2 * kv * head_dim + hidden)  # q, k, v, o
    attention = 2 * (2 * heads * seq * seq * head_dim)  # q k^T and p v
    mlp = 3 * 2 * seq * hidden * inter  # gate, up, down
    assert F.llm_layer(hidden, inter, heads, kv, seq) == projections + attention + mlp


@pytest.mark.parametrize("gated", [False, True])
def test_vit_block_windows_attend_within_themselves(gated):
    width, mlp, heads, seq, windows = 32, 48, 2, 6, 3
    tokens = windows * seq
    mlp_flops = (3 if gated else 2) * 2 * tokens * width * mlp
    hand = 2 * tokens * width * 4 * width + 2 * (2 * windows * seq * seq * width) + mlp_flops
    assert F.vit_block(width, mlp, heads, seq, windows, gated) == hand


def test_joint_block_is_the_hand_sum_of_both_streams():
    dim, heads, head_dim, image, text = 64, 4, 16, 8, 5
    tokens = image + text
    adaln = 2 * (2 * dim * 6 * dim)  # the two AdaLayerNormZero linears on the one timestep embedding
    projections = 2 * tokens * dim * dim * 4  # q, k, v, out of each stream over its own tokens
    attention = 2 * (2 * heads * tokens * tokens * head_dim)
    mlp = 2 * (2 * tokens * dim * 4 * dim)
    assert F.joint_block(dim, heads, head_dim, image, text, False) == adaln + projections + attention + mlp


def test_stacks_scale_one_layer_by_the_published_depth():
    t = P.QWEN25_VL_3B["text"]
    layer = F.llm_layer(
        t["hidden_size"], t["intermediate_size"], t["num_attention_heads"], t["num_key_value_heads"], 12
    )
    head = 2 * 3 * t["hidden_size"] * t["vocab_size"]
    assert F.qwen_text(12, 3) == 36 * layer + head
    assert F.qwen_image_tokens(512) == (36 * 36, 18 * 18)  # 512 px -> 504 px: 36 x 36 patches, 2x2 merged
    assert F.dit_latent_tokens(1024) == 4096


def test_a_toy_stage_becomes_gpu_hours_as_by_hand(monkeypatch):
    toy = C.StageCost("toy", jobs=2, gpus=8, flops_per_unit=3e15, units=600, unit="step")
    p = C.Projection([toy], peak_tflops=1000.0, mfu=0.5)
    hand = 2 * 3e15 * 600 / (1000e12 * 0.5) / 3600  # = 2.0 GPU-hours
    assert p.hours(toy) == pytest.approx(hand) == pytest.approx(2.0)
    (record,) = p.records()
    assert record["wall_hours"] == pytest.approx(2.0 / 8)
    assert C.gpu_hours(989e12 * 0.4 * 3600, 989.0, 0.4) == pytest.approx(1.0)


def test_training_multipliers_reach_the_step_count(monkeypatch):
    """pretrain_encoder: batch x (frozen vision x1 + trained LLM x3); LoRA makes the LLM x2."""
    from workflow_scripts.config.loader import parse

    cfg = parse(_paper_plain())
    spec = cfg.pretrain.encoder
    vision = F.qwen_vision(spec.resolution)
    llm = F.qwen_text(F.qwen_image_tokens(spec.resolution)[1] + 64 + 512, 64 + 512)
    per, steps, unit = C.MODELS["pretrain_encoder"](cfg, {})
    assert (steps, unit) == (3000, "step")
    assert per == spec.loop.batch_size * (vision + 3 * llm)


def _run(argv, monkeypatch, capsys) -> str:
    monkeypatch.chdir(ROOT)
    assert C.main(argv) == 0
    return capsys.readouterr().out


def test_command_prints_every_training_stage_of_the_paper_plan_and_a_total(monkeypatch, capsys):
    out = _run(["--configfile", "paper.example.yaml", "--no-dag"], monkeypatch, capsys)
    for stage in ("data_caption[source=folder]", "pretrain_encoder", "pretrain_decoder[phase=lowres]",
                  "pretrain_decoder[phase=highres]",
                  "rl_coldstart", "rl_encoder", "rl_decoder[variant=2b]", "rl_decoder[variant=2a+2b]",
                  "eval_generate[bench=geneval]"):  # fmt: skip
        assert re.search(rf"^{re.escape(stage)}\s+\d+\s+64\s", out, flags=re.M), stage
    total = re.search(r"^total\s+([\d.]+)$", out, flags=re.M)
    assert total and float(total.group(1)) > 0
    assert "paper budget: 64 H800" in out and "10752 GPU-hours" in out
    assert "assumptions:" in out and "40% MFU of 989 TFLOP/s" in out


def test_command_runs_at_the_tiny_preset(monkeypatch, capsys):
    out = _run(["--no-dag"], monkeypatch, capsys)
    assert "preset tiny" in out and re.search(r"^total\s+\S+$", out, flags=re.M)
    assert "paper budget" not in out


@pytest.mark.parametrize(
    "configfiles", [["paper.example.yaml"], pytest.param([], marks=pytest.mark.slow, id="tiny")]
)
def test_the_cost_models_job_list_is_the_dags(configfiles, monkeypatch):
    """planned_jobs (what the report projects, without a DAG) lists exactly the costed jobs of Snakemake's
    dry run of the config."""
    from workflow_scripts.config.loader import parse, resolve
    from workflow_scripts.launch.plan import jobs_in_dag, user_config

    monkeypatch.chdir(ROOT)
    user = user_config(configfiles, [])
    cfg = parse(resolve(user))
    dag = sorted(C._label(s, w) for s, w in jobs_in_dag(user) if s in C.MODELS)
    assert dag == sorted(C._label(s, w) for s, w in C.planned_jobs(cfg))


def _report(run_dir: Path, resolved: str) -> str:
    """A report from a small warehouse: one run, one finished 8 x 8-GPU job of pretrain_decoder's lowres
    phase (1.5 h), and ``resolved`` as the run's config.resolved.json."""
    from workflow_scripts.report.build import render_run
    from workflow_scripts.warehouse import ingest
    from workflow_scripts.warehouse.db import replace_rows, writer

    run_dir.mkdir()
    (run_dir / "config.resolved.json").write_text(resolved)
    db = run_dir / "umm.duckdb"
    with writer(db) as con:
        ingest.paper(con)
        summary = {"run_id": "ci", "preset": "paper", "config_hash": "c0ffee", "config": "{}", "seed": 1}
        replace_rows(con, "runs", {"run_id": "ci"}, [summary | {"config_diff": "{}", "packages": "{}"}])
        job = {"run_id": "ci", "job_id": "7", "name": "umm-ci-pretrain_decoder_lowres", "launcher": "slurm",
               "state": "COMPLETED", "nodes": 8, "gpus_per_node": 8, "elapsed_seconds": 5400.0}  # fmt: skip
        replace_rows(con, "jobs", {"run_id": "ci"}, [job])
    out = run_dir / "report.html"
    render_run(db, "ci", run_dir, run_dir / "missing.svg", out)
    return out.read_text()


def test_report_shows_projected_beside_measured_gpu_hours(tmp_path):
    from workflow_scripts.config.loader import parse

    plain = _paper_plain(run_name="ci")
    page = _report(tmp_path / "run", json.dumps(plain))
    (body,) = re.findall(r'<table id="cost">(.*?)</table>', page, flags=re.S)
    rows = {re.sub(r"<[^>]+>", "|", r).strip().strip("|").split("|")[0]: r for r in body.split("</tr>")}
    p = C.projection(parse(plain))
    decoder = sum(p.hours(r) for r in p.rows if r.stage.startswith("pretrain_decoder"))
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows["pretrain_decoder"])
    assert cells == ["pretrain_decoder", "2", f"{decoder:.3f}", f"{5400 * 64 / 3600:.3f}"]  # 96 GPU-hours
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows["total"])
    assert cells == ["total", "", f"{p.total_hours:.3f}", "96.000"]
    assert "rl_encoder" in rows and "data_caption" in rows and "40% MFU of 989 TFLOP/s" in page
    assert page.find('<section id="cost">') < page.find('<section id="provenance">')


def test_report_says_why_when_the_resolved_config_does_not_parse(tmp_path):
    page = _report(tmp_path / "run", json.dumps({"preset": "paper", "launcher": {"cost": {"mfu": 2}}}))
    (said,) = re.findall(r'<p id="cost-error">(.*?)</p>', page, flags=re.S)
    assert "no projection from" in said and "config.resolved.json" in said
    assert '<table id="cost">' not in page


def _meta_flops(model, **inputs) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return int(counter.get_total_flops())


def test_the_llm_proxy_layer_equals_a_layer_of_qwen25_vl_itself():
    """The counted Qwen2 layer stands for Qwen2.5-VL's own text model at cut depth (1 layer, meta)."""
    import torch
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLTextModel

    t = {k: v for k, v in P.QWEN25_VL_3B["text"].items() if k != "mrope_section"}
    mrope = {"type": "mrope", "mrope_section": P.QWEN25_VL_3B["text"]["mrope_section"]}
    config = Qwen2_5_VLConfig(text_config={**t, "num_hidden_layers": 1, "rope_scaling": mrope}).text_config
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = Qwen2_5_VLTextModel(config)
        embeds = torch.empty(1, 40, t["hidden_size"])
    real = _meta_flops(model, inputs_embeds=embeds, use_cache=False)
    assert real == F.llm_layer(t["hidden_size"], t["intermediate_size"], 16, 2, 40)


def test_the_dit_count_equals_sd35s_transformer_at_cut_depth():
    """F.dit with 2 layers equals diffusers' SD3Transformer2DModel built from the published config with
    2 layers (patch embedding, embedders, both block kinds, output head), on meta tensors."""
    import torch
    from diffusers import SD3Transformer2DModel

    spec = {**P.SD35_LARGE["transformer"], "num_layers": 2}
    with torch.device("meta"):
        model = SD3Transformer2DModel(**spec)
        inputs = {
            "hidden_states": torch.empty(1, 16, 32, 32),  # 256 px: 32 x 32 latent, 256 tokens
            "encoder_hidden_states": torch.empty(1, 7, spec["joint_attention_dim"]),
            "pooled_projections": torch.empty(1, spec["pooled_projection_dim"]),
            "timestep": torch.empty(1),
        }
    assert _meta_flops(model, **inputs) == F.dit(256, 7, layers=2)


def test_cost_settings_are_checked_and_an_unknown_folder_is_left_out():
    from workflow_scripts.config.loader import parse
    from workflow_scripts.config.typed import ConfigError

    with pytest.raises(ConfigError, match=r"launcher.*mfu in \(0, 1\]"):
        parse(_paper_plain(launcher={"cost": {"mfu": 1.5}}))
    unknown = C.projection(parse(_paper_plain(launcher={"cost": {"folder_images": None}})))
    assert not [r for r in unknown.rows if r.stage.startswith("data_caption")]
    known = C.projection(parse(_paper_plain()))
    (caption,) = [r for r in known.rows if r.stage.startswith("data_caption")]
    assert (caption.units, caption.unit) == (700_000, "image")
