"""A job's fixed cost: stages that train or sample nothing never import the model stack, neither in their
job nor in the launcher; and bench/bench_job_overhead.py splits a job's wall time into its phases (the
2-second target itself is measured by running the bench, never by a timed test)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, stage_command
from workflow_scripts.catalog import STAGES
from workflow_scripts.launch import timing
from workflow_scripts.launch.job import HEAVY


def _python(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env={**os.environ, **env}
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_job_overhead", REPO / "bench" / "bench_job_overhead.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_cheap_stages_and_the_launcher_import_no_model_stack(bench):
    """Every module a cheap stage's job or its launcher imports (the launcher, the job harness, the
    stage's entry and gather modules), imported one after another in one fresh interpreter: none pulls
    in torch, transformers, diffusers, peft, open_clip or timm."""
    modules = ["workflow_scripts.launch.__main__", "workflow_scripts.launch.job"]
    for stage in sorted(bench.CHEAP):  # bookkeeping, files and image rules: < 2 s of work each
        modules += [path.partition(":")[0] for path in (STAGES[stage].run, STAGES[stage].gather) if path]
    code = (
        "import importlib, json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "first = {}\n"
        f"for name in {list(dict.fromkeys(modules))!r}:\n"
        "    importlib.import_module(name)\n"
        "    for lib in heavy:\n"
        "        if lib in sys.modules:\n"
        "            first.setdefault(lib, name)\n"
        "print(json.dumps(first))\n"
    )
    pulled = json.loads(_python(code))
    assert pulled == {}, f"imported by (first module that pulled each in): {pulled}"


def test_launcher_reads_the_shard_count_without_the_stage_module_and_gathers_light(tmp_path):
    """An array stage's launcher sizes the array from the catalog and imports its stage module only for
    the gather step, which loads no model stack. The jobs are replaced by their results so that only the
    launcher process runs."""
    generated = tmp_path / "generated.json"
    command = stage_command(
        "eval_generate",
        tmp_path,
        {},
        wildcards={"system": "none", "bench": "geneval"},
        outputs={"generated": generated},
        eval={"shards": 3},
    )
    code = (
        "import json, sys\n"
        "from workflow_scripts.launch import __main__ as launch\n"
        "from workflow_scripts.launch.job import loaded_modules\n"
        "seen = {}\n"
        "def run_many(fns, **kwargs):\n"
        "    seen['before_gather'] = loaded_modules()\n"
        "    seen['elements'] = len(fns)\n"
        "    made = [dict(shard=k, records=1, path=f'shard{k}', kept=False) for k in range(len(fns))]\n"
        "    return [[result] for result in made]\n"
        "launch.run_many = run_many\n"
        f"seen['rc'] = launch.main({command[3:]!r})\n"
        "seen['after'] = loaded_modules()\n"
        "print(json.dumps(seen))\n"
    )
    seen = json.loads(_python(code).splitlines()[-1])
    assert seen["rc"] == 0 and seen["elements"] == 3
    assert seen["before_gather"] == []
    assert seen["after"] == ["workflow_scripts.eval.stage"]  # the gather step's module, nothing heavy
    assert json.loads(generated.read_text())["shards"] == ["shard0", "shard1", "shard2"]


def _marks(path: Path) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        mark = json.loads(line)
        found.setdefault(mark["event"], mark)
    return found


def test_synthetic_data_jobs_run_without_the_model_stack(tmp_path):
    """Through the real launcher path: collecting and captioning the shapes world (rule-based captions)
    never imports torch, not even to pick a device."""
    raw, captions = tmp_path / "raw", tmp_path / "captions.parquet"
    jobs = [
        ("data_collect", {}, {"raw": raw}),
        ("data_caption", {"raw": raw}, {"captions": captions}),
    ]
    for stage, inputs, outputs in jobs:
        marks = tmp_path / f"{stage}.marks"
        command = stage_command(stage, tmp_path, inputs, wildcards={"source": "synthetic"}, outputs=outputs)
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, env={**os.environ, timing.ENV: str(marks)}
        )
        assert done.returncode == 0, done.stderr[-4000:]
        held = _marks(marks)
        assert held["entry_end"]["modules"] == ["workflow_scripts.data.stage"], stage
        assert held["launcher_done"]["modules"] == (
            ["workflow_scripts.data.stage"] if stage == "data_caption" else []
        )
    assert captions.is_file()


def test_a_stage_importing_torch_late_gets_the_job_thread_count(tmp_path):
    """A stage module that imports torch inside its entry (not at import) still runs with the job's
    thread count, as one that imported it up front does."""
    command = stage_command("rl_variant", tmp_path, {}, wildcards={"variant": "none"})
    code = (
        "import json, sys\n"
        "from workflow_scripts.harness.context import JobSpec\n"
        "from workflow_scripts.launch.job import StageJob\n"
        f"args = {command[3:]!r}\n"
        "spec = JobSpec(stage=args[0], config=args[2], stage_hash=args[4], wildcards={'variant': 'none'},"
        " threads=1)\n"
        "assert 'torch' not in sys.modules\n"
        "print(StageJob(spec, 'tests.test_job_overhead:torch_threads')())\n"
    )
    # torch's own default is every core (2 or more here), and it takes no more from the environment
    assert _python(code).strip().splitlines()[-1] == "1"


def torch_threads(ctx) -> int:
    import torch

    return torch.get_num_threads()


def test_bench_splits_a_jobs_wall_time_into_its_phases(bench, tmp_path):
    """One data_collect job through the launcher: the phases and the (skipped) entry add up to the
    launcher's wall time, none is negative, and the job held no model stack."""
    from workflow_scripts.config.loader import deep_merge
    from workflow_scripts.dag import Run

    run = Run.load(deep_merge(bench._user_config(tmp_path / "results"), {"run_name": "bench"}))
    command = run.launch_command("data_collect", bench.wildcards(run, "data_collect"))
    timed = bench.time_job("data_collect", command, tmp_path / "marks.jsonl", tmp_path / "job.log")
    assert set(timed.phases) == set(bench.PHASES)
    assert sum(timed.phases.values()) + timed.entry == pytest.approx(timed.wall, abs=0.02)
    assert min(timed.phases.values()) > -0.02  # a file's mtime is as fine as the clock's tick
    assert timed.entry < 0.05  # entry skipped: the job's wall time is all fixed cost
    assert [m for m in timed.modules if m in HEAVY] == []


def test_bench_finds_what_an_entry_imports_when_it_runs(bench):
    """The model stack a stage module imports inside its entries is found by following the entry's calls
    (eval_generate: through _system), and an import in a branch not taken by default (a model
    captioner's device check) is left out."""
    generate = bench.entry_imports(STAGES["eval_generate"].run)
    assert {"workflow_scripts.eval.generate", "workflow_scripts.eval.systems"} <= set(generate)
    assert bench.entry_imports(STAGES["eval_summary"].run) == []
    assert bench.entry_imports(STAGES["data_caption"].run) == []
