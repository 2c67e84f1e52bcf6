"""A stage reads nothing outside its view: views as config paths, and the guard every entry point runs under.

The end-to-end proof is the ci DAG (``test_pipeline.py``): every entry point runs there with ``ctx.cfg``
guarded, so a read outside its view fails the job.
"""

from __future__ import annotations

import itertools

import pytest
import yaml

from workflow_scripts.catalog import STAGES, stage_hash, stage_view, view_scope
from workflow_scripts.config.loader import digest, parse, resolve
from workflow_scripts.config.scope import Guard, OutsideView, trace
from workflow_scripts.harness.context import JobContext, JobSpec

from .conftest import CI_CONFIG, REPO


@pytest.fixture(scope="module", params=["tiny", "ci", "paper"])
def resolved(request) -> dict:
    if request.param == "ci":
        return resolve(yaml.safe_load(CI_CONFIG.read_text()))
    if request.param == "paper":  # the paper preset with every model path set
        return resolve(yaml.safe_load((REPO / "paper.example.yaml").read_text()))
    return resolve({})


def _wildcard_values(plain: dict) -> dict[str, list[str]]:
    systems = [*plain["rl"]["variants"], *plain["eval"]["systems"], "unitoken"]
    return {
        "component": [
            "encoder",
            "decoder",
            "clip",
            "longclip",
            "dinov2",
            "dinov3",
            "unitoken_lm",
            "unitoken_vision",
        ],
        "backbone": ["clip", "longclip", "dinov2", "dinov3"],
        "source": list(plain["data"]["sources"]),
        "phase": [p["name"] for p in plain["pretrain"]["decoder"]["phases"]],
        "variant": list(plain["rl"]["variants"]),
        "rl_stage": ["rl_coldstart", "rl_encoder"],
        "unitoken_stage": [s["name"] for s in plain["unitoken"]["stages"]],
        "system": systems,
        "bench": ["unified_bench", "geneval", "geneval_pp", "mmt"],
        "first": systems[:2],
        "second": systems[-2:],
    }


def _jobs(plain: dict):
    """Every stage with every combination of its wildcards' values in ``plain``."""
    for name, stage in STAGES.items():
        if name == "build_tiny_model" and plain["models"]["source"] != "tiny":
            continue  # no tiny models to build
        values = _wildcard_values(plain)
        # eval_system's wildcard: the configured systems (variants and UniToken have their own rules)
        values["external"] = list(plain["eval"]["systems"])
        names = stage.wildcards
        for combo in itertools.product(*(values[w] for w in names)):
            yield name, dict(zip(names, combo, strict=True))


def _exists(plain, path) -> bool:
    node = plain
    for key in path:
        found = key in node if isinstance(node, dict) else isinstance(key, int) and 0 <= key < len(node)
        if not found:
            return False
        node = node[key]
    return True


def test_every_view_is_its_paths_and_they_exist_in_the_tiny_ci_and_paper_configs(resolved):
    for name, wildcards in _jobs(resolved):
        value, scope = trace(STAGES[name].view, resolved, **wildcards)
        # tracing hands back exactly the hashed view: the paths are what the hash covers
        assert digest(value) == stage_hash(resolved, name, **wildcards)
        assert value == stage_view(resolved, name, **wildcards)
        for path in scope.whole | scope.keys:
            assert _exists(resolved, path), f"{name} {wildcards}: {path} is not in the config"


def test_a_views_paths_are_what_it_reads_conditional_parts_only_when_taken(resolved):
    scope = view_scope(resolved, "pretrain_encoder")
    assert scope.paths() == [
        "inference.caption.content_order",
        "inference.caption.instruction",
        "pretrain.encoder",
        "seed",
    ]
    phase = resolved["pretrain"]["decoder"]["phases"][-1]["name"]
    decoder = view_scope(resolved, "pretrain_decoder", phase=phase)
    last = len(resolved["pretrain"]["decoder"]["phases"]) - 1
    assert f"pretrain.decoder.phases.{last}" in decoder.paths()
    assert "models.decoder.path" not in decoder.paths()  # the checkpoint arrives as an input
    captioning = resolved["data"]["captioning"]
    for source in resolved["data"]["sources"]:
        paths = view_scope(resolved, "data_caption", source=source).paths()
        assert ("data.captioning.draft_model" in paths) == (captioning["draft"][source] == "vlm")


def test_the_guard_returns_values_inside_the_view_and_refuses_reads_outside(tmp_path):
    plain = resolve({})
    cfg = parse(plain)
    guarded = Guard(cfg, view_scope(plain, "pretrain_encoder"), "pretrain_encoder")
    assert guarded.seed == cfg.seed
    assert guarded.pretrain.encoder == cfg.pretrain.encoder  # a covered subtree is the real value
    assert guarded.inference.caption.instruction == cfg.inference.caption.instruction
    assert guarded.run_name == cfg.run_name  # where outputs live: every stage's
    with pytest.raises(OutsideView, match=r"stage pretrain_encoder read cfg\.pretrain\.decoder outside"):
        _ = guarded.pretrain.decoder
    with pytest.raises(OutsideView, match=r"add 'inference\.image' to its view in workflow_scripts/catalog"):
        _ = guarded.inference.image
    with pytest.raises(OutsideView, match=r"cfg\.rl"):
        _ = guarded.rl
    with pytest.raises(OutsideView, match=r"cfg\.pretrain \(its keys\)"):
        list(guarded.pretrain)


def test_the_guard_reads_lists_mappings_and_methods_through_itself():
    plain = resolve({})
    cfg = parse(plain)
    phases = plain["pretrain"]["decoder"]["phases"]
    guarded = Guard(cfg, view_scope(plain, "pretrain_decoder", phase=phases[0]["name"]), "pretrain_decoder")
    # the view reads every phase's name to select one: the entry may do the same, and read that phase
    (selected,) = [p for p in guarded.pretrain.decoder.phases if p.name == phases[0]["name"]]
    assert selected == cfg.pretrain.decoder.phases[0]
    if len(phases) > 1:
        with pytest.raises(OutsideView, match=r"cfg\.pretrain\.decoder\.phases\.1\.resolution"):
            _ = guarded.pretrain.decoder.phases[1].resolution
    system = next(iter(plain["eval"]["systems"]), None)
    if system is not None:
        scope = view_scope(plain, "eval_system", external=system)
        assert Guard(cfg, scope, "eval_system").eval.systems[system] == cfg.eval.systems[system]
        with pytest.raises(OutsideView, match=r"cfg\.eval\.systems \(its keys\)"):
            list(Guard(cfg, scope, "eval_system").eval.systems)


def test_every_entry_point_receives_the_guard(tmp_path):
    plain = resolve({})
    spec = JobSpec("pretrain_encoder", str(tmp_path / "c.json"), stage_hash(plain, "pretrain_encoder"))
    ctx = JobContext(spec, parse(plain), plain, 0, 1, 0)
    assert isinstance(ctx.cfg, Guard)
    assert not hasattr(ctx, "plain")
    assert ctx.config_hash == digest(plain) and ctx.run_seed == plain["seed"]
    assert ctx.view() == stage_view(plain, "pretrain_encoder")
    with pytest.raises(OutsideView):
        _ = ctx.cfg.models.decoder


def test_a_method_reads_its_fields_through_the_guard_so_gpu_only_reads_are_caught_on_a_cpu():
    import torch

    plain = resolve({})
    cfg = parse(plain)
    cuda = torch.device("cuda")  # a device object needs no GPU
    rl = Guard(cfg, view_scope(plain, "rl_encoder"), "rl_encoder")
    assert rl.models.torch_dtype(cuda) == cfg.models.torch_dtype(cuda)
    tiny = Guard(cfg, view_scope(plain, "build_tiny_model", component="encoder"), "build_tiny_model")
    assert tiny.models.torch_dtype(torch.device("cpu")) == torch.float32  # the CPU never reads the dtype
    with pytest.raises(OutsideView, match=r"cfg\.models\.dtype"):
        tiny.models.torch_dtype(cuda)
    with pytest.raises(AttributeError):
        _ = rl.models.no_such_setting
