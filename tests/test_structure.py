"""The shape of the source tree: one catalog entry per stage, and imports that flow one way."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from workflow_scripts.catalog import JOBS, STAGES

PACKAGE = Path(__file__).resolve().parents[1] / "workflow_scripts"
STAGE_PACKAGES = {"data", "pretrain", "rl", "unitoken", "eval", "tiny"}


def _imports(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Every module of the package (dotted, without the ``workflow_scripts.`` prefix) -> the modules of the
    package it imports, at any depth of the file (a function-level import counts too)."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(parts[:-1])[: len(parts) - node.level]
                targets.add(".".join([*base, node.module] if node.module else base))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workflow_scripts"):
                name = node.module.removeprefix("workflow_scripts").lstrip(".")
                targets |= {f"{name}.{a.name}".lstrip(".") for a in node.names} if not name else {name}
            elif isinstance(node, ast.Import):
                targets |= {
                    a.name.removeprefix("workflow_scripts.")
                    for a in node.names
                    if a.name.startswith("workflow_scripts.")
                }
        found[module] = {t for t in targets if t}
    return found


def _package(module: str) -> str:
    return module.split(".")[0]


def _violations(source: set[str], forbidden: set[str], root: Path = PACKAGE) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in _imports(root).items()
        if _package(module) in source
        for target in targets
        if _package(target) in forbidden and _package(target) != _package(module)
    )


# --- imports flow one way ------------------------------------------------------------------------------
def test_no_stage_package_imports_the_launcher():
    assert _violations(STAGE_PACKAGES | {"harness", "models", "reward", "train"}, {"launch"}) == []


def test_the_launcher_imports_no_stage_package():
    assert _violations({"launch"}, STAGE_PACKAGES | {"models", "reward"}) == []


def test_the_ground_floor_imports_no_stage_and_no_launcher():
    assert _violations({"harness", "catalog"}, STAGE_PACKAGES | {"launch", "dag", "models", "reward"}) == []


def test_eval_imports_no_rl():
    assert _violations({"eval"}, {"rl"}) == []


def test_models_import_no_data_unitoken_reward_or_tiny_builders():
    assert _violations({"models"}, {"data", "unitoken", "reward", "tiny"}) == []


def test_no_stage_imports_another_stages_common_module():
    bad = [
        f"{module} imports {target}"
        for module, targets in _imports().items()
        for target in targets
        if target.split(".")[-1] == "common" and _package(target) != _package(module)
    ]
    assert bad == []


def test_the_import_rules_see_every_form_of_import(tmp_path):
    (tmp_path / "rl").mkdir()
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "score.py").write_text(
        "from workflow_scripts.rl.common import gather\n"
        "import workflow_scripts.launch.job\n"
        "def f():\n    from ..rl import grpo\n    from workflow_scripts import reward\n"
    )
    assert _violations({"eval"}, {"rl", "launch", "reward"}, tmp_path) == [
        "eval.score imports launch.job",
        "eval.score imports reward",
        "eval.score imports rl",
        "eval.score imports rl.common",
    ]


# --- one catalog ---------------------------------------------------------------------------------------
def _rule_stages() -> dict[str, set[str]]:
    """rule name -> the catalog names it passes to RUN.stage_hash_of / RUN.launch_args / RUN.threads."""
    rules: dict[str, set[str]] = {}
    for path in sorted((PACKAGE.parent / "rules").glob("*.smk")):
        for block in re.split(r"^(?=(?:rule|checkpoint) )", path.read_text(), flags=re.M):
            head = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if head:
                named = re.findall(r"RUN\.(?:stage_hash_of|launch_args|threads)\(\"(\w+)\"\)", block)
                rules[head.group(1)] = set(named)
    return rules


def test_every_rule_with_a_stage_hash_has_a_catalog_entry_and_every_entry_a_rule():
    rules = _rule_stages()
    with_stage = {rule: named for rule, named in rules.items() if named}
    for rule, named in with_stage.items():
        assert named == {rule}, f"rule {rule} names catalog entries {named}"
    assert set(with_stage) == set(STAGES)


def test_launched_rules_are_exactly_the_catalogs_jobs():
    launched = {
        rule
        for path in (PACKAGE.parent / "rules").glob("*.smk")
        for rule in re.findall(r"RUN\.launch_args\(\"(\w+)\"\)", path.read_text())
    }
    assert launched == set(JOBS)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_catalog_entry_points_resolve(name):
    stage = STAGES[name]
    for target in (stage.run, stage.gather):
        if target:
            module, _, function = target.partition(":")
            assert callable(getattr(importlib.import_module(module), function)), target


def test_catalog_views_and_fan_out_read_the_config(tiny_plain):
    from workflow_scripts.config.loader import parse

    cfg = parse(tiny_plain)
    assert STAGES["eval_generate"].array(cfg) == cfg.eval.shards
    assert STAGES["unitoken_pretokenize"].array(cfg) == cfg.unitoken.pretokenize.shards
    assert STAGES["pretrain_decoder"].wildcards == ["phase"]
    assert STAGES["pretrain_decoder"].trained(phase="lowres") == "pretrain_decoder_lowres"


def test_every_training_stage_names_its_loop_and_so_its_engine(tiny_plain):
    """A stage that trains a model says where its LoopConfig is: the plan shows its engine, the cost model
    its steps. The paper preset's engines are the README's table."""
    from tests.test_config import PAPER_PATHS
    from workflow_scripts.config.loader import parse, resolve
    from workflow_scripts.train.config import LoopConfig

    trains = {n for n, s in STAGES.items() if s.trains} | {"unitoken_vq", "unitoken_train"}
    assert {n for n, s in STAGES.items() if s.loop} == trains
    cfg = parse(tiny_plain)
    wildcards = {"phase": "lowres", "unitoken_stage": "joint", "variant": "2b"}
    for name in trains:
        assert isinstance(STAGES[name].loop(cfg, wildcards), LoopConfig), name
        assert STAGES[name].engine(cfg, wildcards) == "ddp", name  # the tiny preset runs on ddp
    paper = parse(resolve({"preset": "paper", **PAPER_PATHS}))
    engines = {
        n: STAGES[n].engine(paper, wildcards) for n in ("pretrain_encoder", "pretrain_decoder", "rl_encoder")
    }
    assert engines == {"pretrain_encoder": "deepspeed-zero2", "pretrain_decoder": "fsdp", "rl_encoder": "ddp"}
    assert STAGES["data_build"].engine(paper, {}) is None


@pytest.fixture
def tiny_plain():
    from workflow_scripts.config.loader import resolve

    return resolve({})
