"""Planning: the README's paper command plans as printed, a dry run writes nothing, plan-only mode needs
no model directories, and the plan command prints each stage's sbatch settings."""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, snakemake, write_config
from workflow_scripts.config.typed import ConfigError

# what every model directory check looks for, whichever layout a key expects (stand-ins, not models)
MARKERS = (
    "config.json",
    "open_clip_config.json",
    "model_index.json",
    "transformer/config.json",
    "vae/config.json",
)


def readme_paper_commands() -> list[list[str]]:
    """Every `snakemake ...` line of the README's "Paper preset on Slurm" code blocks, as argv."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Paper preset on Slurm", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [line.split("  #")[0] for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line) for line in lines if line.strip().startswith(("snakemake", "python"))]


def external_paths(node, found=None) -> list[str]:
    found = [] if found is None else found
    if isinstance(node, dict):
        for value in node.values():
            external_paths(value, found)
    elif isinstance(node, str) and node.startswith(("/models/", "/data/")):
        found.append(node)
    return found


def relocate(node, root: Path):
    """The example config with every /models/... and /data/... path moved under ``root``."""
    if isinstance(node, dict):
        return {k: relocate(v, root) for k, v in node.items()}
    if isinstance(node, str) and node.startswith(("/models/", "/data/")):
        return str(root / node.lstrip("/"))
    return node


def workdir_for_paper(tmp_path: Path, stand_ins: bool) -> Path:
    """A working directory with the repository's config.yaml and slurm profile, and a copy of
    paper.example.yaml whose paths point under tmp_path (with stand-in model directories if asked)."""
    work = tmp_path / "work"
    write_config(work, yaml.safe_load((REPO / "config.yaml").read_text()))
    shutil.copytree(REPO / "slurm", work / "slurm")
    example = yaml.safe_load((REPO / "paper.example.yaml").read_text())
    models = tmp_path / "stand-ins"
    if stand_ins:
        for path in external_paths(example):
            folder = models / path.lstrip("/")
            if folder.suffix in (".jsonl", ".tsv"):  # a data file (e.g. GenEval++'s items), not a directory
                folder.parent.mkdir(parents=True, exist_ok=True)
                folder.write_text("")
                continue
            (folder / "scheduler").mkdir(parents=True, exist_ok=True)
            for marker in MARKERS:
                (folder / marker).parent.mkdir(parents=True, exist_ok=True)
                (folder / marker).write_text("{}")
    (work / "paper.example.yaml").write_text(yaml.safe_dump(relocate(example, models), sort_keys=False))
    return work


def tree_digest(root: Path) -> str:
    """Names, contents and modification times of every file under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root)}:{path.stat().st_mtime_ns}:".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_readme_paper_command_plans_against_stand_in_model_directories(tmp_path):
    commands = readme_paper_commands()
    (run,) = [c for c in commands if c[0] == "snakemake" and "-n" not in c]
    assert run[:4] == ["snakemake", "--profile", "slurm", "all"] and "paper.example.yaml" in run
    work = workdir_for_paper(tmp_path, stand_ins=True)
    result = snakemake(work, *run[1:], "-n", "--quiet", "rules")
    jobs = result.stdout + result.stderr
    for rule in ("data_caption", "pretrain_decoder", "rl_encoder", "eval_generate", "eval_judge"):
        assert re.search(rf"^{rule}\s+\d+", jobs, flags=re.M), rule
    assert not (work / "results").exists(), "a dry run must not create the run directory"


def test_paper_example_lists_every_path_the_checks_need(tmp_path):
    """Without the stand-ins the plan stops at the first missing directory, naming its key."""
    work = workdir_for_paper(tmp_path, stand_ins=False)
    result = snakemake(
        work, "--profile", "slurm", "all", "-n", "--configfile", "paper.example.yaml", check=False
    )
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "config key 'models.encoder.path'" in message and "does not exist" in message


def test_plan_only_needs_no_model_directories_and_writes_nothing(tmp_path):
    (plan_only,) = [c for c in readme_paper_commands() if "plan_only=true" in c]
    work = workdir_for_paper(tmp_path, stand_ins=False)
    result = snakemake(work, *plan_only[1:], "--quiet", "rules")
    assert "plan_only=true" in result.stderr  # the note says what was not checked
    assert re.search(r"^pretrain_encoder\s+1", result.stdout + result.stderr, flags=re.M)
    assert not (work / "results").exists()
    # the same switch refuses to run jobs
    running = [a for a in plan_only[1:] if a != "-n"]
    refused = snakemake(work, *running, "--until", "data_collect", check=False)
    assert refused.returncode != 0 and "only plans" in refused.stdout + refused.stderr
    assert not (work / "results").exists()


def test_missing_path_hint_is_syntax_the_loader_accepts():
    from snakemake.cli import parse_config

    from workflow_scripts.config.loader import resolve

    example = yaml.safe_load((REPO / "paper.example.yaml").read_text())
    del example["models"]["reward"]["clip"]
    with pytest.raises(ConfigError) as err:
        resolve(example)
    (hint,) = re.findall(r"--config (models=\"[^\"]+\")", str(err.value))
    ((key, value),) = parse_config([hint.replace('"', "")]).items()
    fixed = resolve(
        {**example, key: {**example[key], "reward": {**example["models"]["reward"], **value["reward"]}}}
    )
    assert fixed["models"]["reward"]["clip"]["path"] == "/models/..."


def test_dry_runs_leave_an_existing_run_untouched(tmp_path):
    """A config edit planned with -n must not rewrite the run's resolved config (or anything else)."""
    from workflow_scripts.dag import Run

    write_config(tmp_path, yaml.safe_load((REPO / "tests/configs/ci.yaml").read_text()))
    user = {
        **yaml.safe_load((REPO / "tests/configs/ci.yaml").read_text()),
        "results_root": str(tmp_path / "results"),
    }
    Run.load(user)  # the state a real run leaves: its resolved config
    results = tmp_path / "results"
    before = tree_digest(results)
    snakemake(tmp_path, "all", "-n", "--config", f"results_root={results}", "eval={judge: {margin: 0.05}}")
    assert tree_digest(results) == before
    snakemake(tmp_path, "all", "-n", "--config", f"results_root={results}")
    assert tree_digest(results) == before


def test_plan_command_prints_each_stages_sbatch_settings(tmp_path, capsys):
    from workflow_scripts.launch import plan

    (command,) = [
        c for c in readme_paper_commands() if c[:3] == ["python", "-m", "workflow_scripts.launch.plan"]
    ]
    assert command[3:5] == ["--configfile", "paper.example.yaml"]
    assert plan.main(["--configfile", str(REPO / "paper.example.yaml"), "--directory", str(REPO)]) == 0
    out = capsys.readouterr().out
    # job counts come from Snakemake's own dry run: 5 systems x 4 benchmarks, two decoder phases
    generate = r"^eval_generate +20 x array 0-\d+%64 +- +1 +1 +1 +12 +125GB +600\b"
    assert re.search(generate, out, flags=re.M), out
    # each training stage's engine (loop.distributed), from the catalog
    assert re.search(r"^pretrain_decoder +2 +fsdp +8 +8 +8 +12 +1000GB +2880\b", out, flags=re.M), out
    assert re.search(r"^pretrain_encoder +1 +deepspeed-zero2 +8 ", out, flags=re.M), out
    assert re.search(r"^rl_encoder +1 +ddp +8 ", out, flags=re.M), out
    # scoring with a 72B VLM judge takes a node; the others one GPU
    assert re.search(r"^eval_score\[bench=geneval_pp\|mmt\] +10 +- +1 +1 +8 ", out, flags=re.M), out
    assert re.search(r"^eval_score\[bench=geneval\|unified_bench\] +10 +- +1 +1 +1 ", out, flags=re.M), out
    # and what it will cost, per stage and in total (workflow_scripts/cost)
    assert re.search(r"^pretrain_decoder\[phase=highres\] +1 +64 .* step +5000 +[\d.]+", out, flags=re.M), out
    assert re.search(r"^total +[\d.]+$", out, flags=re.M), out
    assert "build_tiny_model" not in out and "unitoken_train" not in out  # not in the paper DAG
    user = plan.user_config([str(REPO / "paper.example.yaml")], ["eval={shards: 3}"], base=None)
    settings = {p.stage: p.settings() for p in plan.plan(user)}
    assert settings["eval_generate"]["gpus-per-node"] == "1" and settings["eval_generate"]["mem"] == "125GB"
    assert settings["eval_judge"]["gpus-per-node"] == "8" and settings["eval_judge"]["mem"] == "1000GB"
    assert "gpus-per-node" not in settings["data_build"] and settings["data_build"]["nodes"] == "1"
    assert {p.stage: p.jobs for p in plan.plan(user)}["eval_generate"] == "20 x array 0-2%64"
