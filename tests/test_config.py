"""Config: presets, schema validation with key-naming errors, CLI string coercion, stage views."""

from __future__ import annotations

import copy
import json

import pytest

from workflow_scripts.config.loader import config_schema, parse, resolve
from workflow_scripts.config.stages import stage_hash
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
}


def test_tiny_is_the_default_and_inherits_paper_values():
    cfg = parse(resolve({}))
    assert cfg.preset == "tiny"
    assert cfg.models.source == "tiny"
    # values the tiny preset does not touch come from the paper preset
    assert cfg.inference.image.guidance_scale == 5.0
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
    res = cfg.launcher.resources("pretrain_decoder")
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
    res = cfg.launcher.resources("data_build")
    assert (res.nodes, res.partition, res.cpus_per_task) == (3, "gpu", cfg.launcher.defaults.cpus_per_task)
    assert cfg.launcher.resources("data_collect") == cfg.launcher.defaults
    assert cfg.launcher.resources("pretrain_encoder").cpus_per_task == 2  # the tiny preset's own override
    with pytest.raises(ConfigError, match=r"launcher\.stages\.pretrain_encoder\.nodez"):
        resolve({"launcher": {"stages": {"pretrain_encoder": {"nodez": 3}}}})
