"""Config: presets, schema validation with key-naming errors, CLI string coercion, stage views."""

from __future__ import annotations

import copy
import json
import re

import pytest

from workflow_scripts.catalog import JOBS, resources, stage_hash
from workflow_scripts.config.loader import config_schema, deep_merge, parse, resolve
from workflow_scripts.config.typed import ConfigError
from workflow_scripts.dag import Run

PAPER_PATHS = {
    "models": {
        "encoder": {"path": "/models/qwen"},
        "decoder": {"path": "/models/sd35"},
        "reward": {k: {"path": f"/models/{k}"} for k in ("clip", "longclip", "dinov2", "dinov3")},
    },
    "data": {
        "sources": {"folder": {"path": "/data/images"}},
        "captioning": {"draft_model": {"path": "/models/vlm"}, "refine_model": {"path": "/models/llm"}},
    },
    "eval": {"unified_bench": {"folder": "/data/UniBench/Image"}},
}


def test_tiny_is_the_default_and_inherits_paper_values():
    cfg = parse(resolve({}))
    assert cfg.preset == "tiny"
    assert cfg.models.source == "tiny"
    # values the tiny preset does not touch come from the paper preset
    assert cfg.inference.caption.temperature == 0.7
    assert cfg.models.decoder.conditioning_role == "generate"


def test_paper_preset_states_the_published_numbers():
    cfg = parse(resolve({"preset": "paper", **PAPER_PATHS}))
    phases = {p.name: p for p in cfg.pretrain.decoder.phases}
    assert [p.name for p in cfg.pretrain.decoder.phases] == ["lowres", "highres"]
    assert (phases["lowres"].resolution, phases["lowres"].loop.steps, phases["lowres"].loop.batch_size) == (
        512,
        10000,
        256,
    )
    assert (
        phases["highres"].resolution,
        phases["highres"].loop.steps,
        phases["highres"].loop.batch_size,
    ) == (1024, 5000, 256)
    res = resources(cfg, "pretrain_decoder")
    assert (res.nodes, res.gpus_per_node, res.tasks_per_node) == (8, 8, 8)
    assert cfg.models.decoder.projector_hidden_size == 8192
    assert cfg.data.splits.bench_count == 100


def test_paper_preset_without_model_paths_names_the_key():
    with pytest.raises(ConfigError, match=r"models\.encoder\.path"):
        resolve({"preset": "paper"})


def test_misspelt_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as err:
        resolve({"pretrain": {"encoder": {"loop": {"stpes": 3}}}})
    message = str(err.value)
    assert "pretrain.encoder.loop.stpes" in message
    assert "did you mean 'steps'" in message


def test_wrong_type_names_the_key_and_what_it_is():
    with pytest.raises(ConfigError) as err:
        resolve({"pretrain": {"encoder": {"loop": {"steps": "many"}}}})
    assert "pretrain.encoder.loop.steps" in str(err.value)
    assert "integer" in str(err.value)


def test_unknown_preset_is_rejected():
    with pytest.raises(ConfigError, match="preset"):
        resolve({"preset": "huge"})


def test_cli_strings_are_coerced_by_the_schema():
    # Snakemake parses nested --config values with YAML's BaseLoader: every leaf is a string
    plain = resolve(
        {
            "seed": "3",
            "pretrain": {"encoder": {"loop": {"steps": "5", "optim": {"lr": "1e-4"}}}},
            "data": {"sources": {"photos": {"enabled": "false"}}},
        }
    )
    assert plain["seed"] == 3
    assert plain["pretrain"]["encoder"]["loop"]["steps"] == 5
    assert plain["pretrain"]["encoder"]["loop"]["optim"]["lr"] == 1e-4
    assert plain["data"]["sources"]["photos"]["enabled"] is False


def test_cross_field_checks_name_the_keys():
    with pytest.raises(ConfigError, match=r"pretrain\.encoder resolution 48 is not one of data\.resolutions"):
        resolve({"pretrain": {"encoder": {"resolution": 48}}})
    with pytest.raises(ConfigError, match="batch_size 10 is not a multiple of micro_batch_size 8"):
        resolve({"pretrain": {"encoder": {"loop": {"batch_size": 10}}}})


def test_committed_schema_matches_the_dataclasses(repo):
    committed = json.loads((repo / "config.schema.json").read_text())
    assert committed == config_schema(), "regenerate with: python -m workflow_scripts.config.schema"


def test_missing_model_directory_fails_before_any_job(tmp_path):
    user = {"preset": "paper", **PAPER_PATHS, "results_root": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"models\.encoder\.path.*/models/qwen does not exist"):
        Run.load(user)
    assert not (tmp_path / "paper").exists()


def test_stage_hashes_change_only_for_stages_that_read_the_value():
    base = resolve({})
    edited = resolve({"pretrain": {"encoder": {"loop": {"steps": 7}}}})
    assert stage_hash(base, "pretrain_encoder") != stage_hash(edited, "pretrain_encoder")
    for stage, wildcards in [
        ("data_build", {}),
        ("pretrain_decoder", {"phase": "lowres"}),
        ("data_collect", {"source": "synthetic"}),
        ("build_tiny_model", {"component": "decoder"}),
    ]:
        assert stage_hash(base, stage, **wildcards) == stage_hash(edited, stage, **wildcards), stage
    # the launcher section never re-runs anything
    relaunched = resolve({"launcher": {"kind": "slurm", "defaults": {"nodes": 2}}})
    assert stage_hash(base, "pretrain_encoder") == stage_hash(relaunched, "pretrain_encoder")


def test_decoder_phase_hash_covers_only_its_own_phase():
    base = resolve({})
    phases = copy.deepcopy(base["pretrain"]["decoder"]["phases"])
    phases[1]["loop"]["steps"] += 1
    edited = resolve({"pretrain": {"decoder": {"phases": phases}}})
    assert stage_hash(base, "pretrain_decoder", phase="lowres") == stage_hash(
        edited, "pretrain_decoder", phase="lowres"
    )
    assert stage_hash(base, "pretrain_decoder", phase="highres") != stage_hash(
        edited, "pretrain_decoder", phase="highres"
    )


def test_per_stage_resources_override_defaults():
    cfg = parse(resolve({"launcher": {"stages": {"data_build": {"nodes": 3, "partition": "gpu"}}}}))
    res = resources(cfg, "data_build")
    assert (res.nodes, res.partition, res.cpus_per_task) == (3, "gpu", cfg.launcher.defaults.cpus_per_task)
    assert resources(cfg, "data_collect") == cfg.launcher.defaults
    assert resources(cfg, "pretrain_encoder").cpus_per_task == 2  # the tiny preset's own override
    with pytest.raises(ConfigError, match=r"launcher\.stages\.pretrain_encoder\.nodez"):
        resolve({"launcher": {"stages": {"pretrain_encoder": {"nodez": 3}}}})


# --- lists of named things merge by name (issue 14, item 4) ---------------------------------------
def _phases(plain):
    return {p["name"]: p for p in plain["pretrain"]["decoder"]["phases"]}


def test_one_decoder_phase_changes_without_restating_the_list():
    # what Snakemake hands over for --config pretrain="{decoder: {phases: {highres: {loop: {steps: 7}}}}}"
    base = resolve({})
    edited = resolve({"pretrain": {"decoder": {"phases": {"highres": {"loop": {"steps": "7"}}}}}})
    assert [p["name"] for p in edited["pretrain"]["decoder"]["phases"]] == ["lowres", "highres"]
    assert _phases(edited)["highres"]["loop"]["steps"] == 7
    assert _phases(edited)["highres"]["loop"]["optim"] == _phases(base)["highres"]["loop"]["optim"]
    assert _phases(edited)["lowres"] == _phases(base)["lowres"]
    assert stage_hash(base, "pretrain_decoder", phase="lowres") == stage_hash(
        edited, "pretrain_decoder", phase="lowres"
    )
    assert stage_hash(base, "pretrain_decoder", phase="highres") != stage_hash(
        edited, "pretrain_decoder", phase="highres"
    )


def test_named_mapping_order_adds_and_drops_items():
    reordered = resolve({"unitoken": {"stages": {"order": ["align", "instruct"]}}})
    assert [s["name"] for s in reordered["unitoken"]["stages"]] == ["align", "instruct"]
    highres = copy.deepcopy(_phases(resolve({}))["highres"])
    del highres["name"]
    added = resolve({"pretrain": {"decoder": {"phases": {"extra": highres}}}})
    assert [p["name"] for p in added["pretrain"]["decoder"]["phases"]] == ["lowres", "highres", "extra"]
    with pytest.raises(ConfigError, match=r"pretrain\.decoder\.phases\.order.*'mid'"):
        resolve({"pretrain": {"decoder": {"phases": {"order": ["lowres", "mid"]}}}})
    with pytest.raises(ConfigError, match=r"pretrain\.decoder\.phases\.highres.*mapping"):
        resolve({"pretrain": {"decoder": {"phases": {"highres": 3}}}})
    # a list still replaces the whole list
    (lowres,) = [p for p in resolve({})["pretrain"]["decoder"]["phases"] if p["name"] == "lowres"]
    only = resolve({"pretrain": {"decoder": {"phases": [lowres]}}})
    assert [p["name"] for p in only["pretrain"]["decoder"]["phases"]] == ["lowres"]


def test_presets_write_named_lists_as_mappings_and_resolve_them_to_lists():
    from workflow_scripts.config.loader import NAMED_LISTS, load_preset

    assert {("pretrain", "decoder", "phases"), ("unitoken", "stages")} <= NAMED_LISTS
    tiny = load_preset("tiny")
    assert [s["name"] for s in tiny["unitoken"]["stages"]] == ["align", "joint", "instruct"]
    # tiny states only each UniToken stage's loop; the rest comes from the paper's stage of that name
    assert tiny["unitoken"]["stages"][0]["trainable"] == "vision_adapter"
    assert tiny["unitoken"]["stages"][1]["loop"]["steps"] == 400


# --- resources match the work (item 8) ---------------------------------------------------------
def test_tiny_preset_claims_no_gpu_for_any_stage():
    cfg = parse(resolve({}))
    assert {s: resources(cfg, s).gpus_per_node for s in JOBS} == dict.fromkeys(JOBS, 0)


def test_the_catalog_shapes_each_stage_on_the_cluster_the_preset_describes():
    """Footprints live in the catalog, the cluster in launcher.defaults: the presets' per-stage entries
    hold no job shape, and a bigger cluster reshapes every stage without a per-stage edit."""
    for preset in ("paper", "tiny"):
        stages = resolve({"preset": preset, **PAPER_PATHS})["launcher"]["stages"]
        shaped = {s: sorted(set(v) & {"nodes", "gpus_per_node", "tasks_per_node"}) for s, v in stages.items()}
        assert {s: v for s, v in shaped.items() if v} == {}, preset

    def shape(cfg, stage, **wildcards):
        res = resources(cfg, stage, wildcards)
        return res.nodes, res.tasks_per_node, res.gpus_per_node

    paper = parse(resolve({"preset": "paper", **PAPER_PATHS}))
    assert shape(paper, "pretrain_decoder") == (8, 8, 8)
    assert shape(paper, "data_caption") == (8, 1, 8)  # one captioner per node, over all its GPUs
    assert shape(paper, "eval_judge") == (1, 1, 8)
    assert shape(paper, "eval_generate") == (1, 1, 1)
    assert shape(paper, "data_build") == (1, 1, 0)
    # a benchmark judged by a local VLM loads it over a node; without a judge it scores on one GPU
    assert shape(paper, "eval_score", bench="geneval") == (1, 1, 1)
    with_judge = deep_merge(PAPER_PATHS, {"eval": {"mmt": {"judge_path": "/m/vlm"}}})
    judged = parse(resolve({"preset": "paper", **with_judge}))
    assert shape(judged, "eval_score", bench="mmt") == (1, 1, 8)
    assert shape(paper, "eval_score", bench="mmt") == (1, 1, 1)  # PAPER_PATHS sets no MMT judge
    bigger = {"launcher": {"defaults": {"nodes": 16, "gpus_per_node": 4, "tasks_per_node": 4}}}
    big = parse(resolve({"preset": "paper", **PAPER_PATHS, **bigger}))
    assert [shape(big, s) for s in ("pretrain_decoder", "data_caption", "eval_judge", "eval_generate")] == [
        (16, 4, 4),
        (16, 1, 4),
        (1, 1, 4),
        (1, 1, 1),
    ]
    # an explicit per-stage entry still wins over the footprint
    pinned = parse(
        resolve({"preset": "paper", **PAPER_PATHS, "launcher": {"stages": {"eval_judge": {"nodes": 2}}}})
    )
    assert shape(pinned, "eval_judge") == (2, 1, 8)


def test_paper_memory_scales_with_the_gpus_a_stage_uses(tmp_path):
    from workflow_scripts.launch.launcher import sbatch_script

    cfg = parse(resolve({"preset": "paper", **PAPER_PATHS}))

    def sbatch(stage):
        text = sbatch_script(tmp_path, resources(cfg, stage), stage)
        return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, flags=re.M))

    assert (sbatch("eval_generate")["gpus-per-node"], sbatch("eval_generate")["mem"]) == ("1", "125GB")
    assert (sbatch("pretrain_decoder")["gpus-per-node"], sbatch("pretrain_decoder")["mem"]) == ("8", "1000GB")
    assert "gpus-per-node" not in sbatch("eval_summary") and sbatch("eval_summary")["mem"] == "64GB"
    assert sbatch("data_build")["nodes"] == "1" and "gpus-per-node" not in sbatch("data_build")
    # a stage's own mem_gb wins over the per-GPU rule
    pinned = parse(
        resolve({"preset": "paper", **PAPER_PATHS, "launcher": {"stages": {"eval_generate": {"mem_gb": 40}}}})
    )
    assert resources(pinned, "eval_generate").mem_gb == 40


# --- names that become path components (item 11) ----------------------------------------------
@pytest.mark.parametrize("name", ["space test", "../up", "a/b", ""])
def test_run_name_must_be_a_slug(name):
    with pytest.raises(ConfigError, match=r"config key 'run_name' = .* is not a valid name.*no spaces"):
        resolve({"run_name": name})


def test_phase_and_system_names_must_be_slugs():
    highres = {k: v for k, v in _phases(resolve({}))["highres"].items() if k != "name"}
    with pytest.raises(ConfigError, match=r"pretrain\.decoder\.phases\.high res"):
        resolve({"pretrain": {"decoder": {"phases": {"order": ["lowres", "high res"], "high res": highres}}}})
    with pytest.raises(ConfigError, match=r"eval\.systems\.my/sys"):
        resolve({"eval": {"systems": {"my/sys": {"captioner": "/a", "text_encoder": "/b", "decoder": "/c"}}}})


def test_launcher_arguments_keep_a_path_with_spaces_one_word(tmp_path):
    import shlex

    run = Run.load({"results_root": str(tmp_path / "my results")}, write=False)
    args = run.launch_args("data_collect")(
        {"source": "synthetic"}, {}, {"raw": str(tmp_path / "my results/tiny/data/raw/synthetic.parquet")}
    )
    words = shlex.split(args)
    assert words[:3] == ["data_collect", "--config", str(tmp_path / "my results/tiny/config.resolved.json")]
    assert words[-2:] == ["--output", f"raw={tmp_path / 'my results/tiny/data/raw/synthetic.parquet'}"]
    assert not (tmp_path / "my results").exists()  # loading writes nothing
