"""Per-job fixed cost: ``python bench/bench_job_overhead.py [--stages S ...] [--repeats N] [--imports]``.

Every stage runs as ``python -m workflow_scripts.launch <stage> --config ... --stage-hash ...`` (as its
rule calls it) through the configured launcher (the tiny preset's: submitit's local executor). A job's
fixed cost is its wall time minus the time inside the stage's entry function: what a stage of no work
still pays. This bench runs one job of each stage kind through that real path on a fresh run of the
tiny preset with the entry function imported but not called (``UMM_BENCH_SKIP_ENTRY``, see
``workflow_scripts/launch/timing.py``, which also records the phase marks). In its place the job
imports what the entry imports when it runs (found in its source: see :func:`entry_imports`), so a
model-loading stage's job holds its model stack and exits with it, and that import ('stack') is timed
apart: it is part of the work of a stage that loads a model. The wall time splits into

* launcher: the launcher's interpreter and imports, its config load and view-hash check, and the
  submission (lease, executor, pickling the job, starting submitit's local controller);
* job start: the controller's and the task's interpreters, submitit, unpickling the job (its imports);
* config: the task's config load, view-hash check and config view guard;
* import: importing the stage's module (its entry function);
* result: ``gc.freeze`` and submitit pickling the result;
* exit: the task process's exit, then the controller's (noticed here by watching their pids);
* poll: from the controller's exit until the launcher's poll notices it;
* finish: the launcher's bookkeeping (lease, journal) and its own exit.

It prints a table per stage kind (median over ``--repeats`` runs), their mean and max, and the sum
over the tiny DAG's launcher calls: each kind's fixed cost times its number of rules' jobs in the DAG
(from ``snakemake all -n``; an array stage's call, "stage xN", runs its N elements' jobs). ``--imports``
adds where each job's imports spend their time (``python -X importtime``). Target: fixed <= 2 s a job.

The warehouse's ingest jobs do not go through the launcher and are not measured here.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from workflow_scripts.catalog import JOBS, STAGES  # noqa: E402
from workflow_scripts.dag import Run  # noqa: E402
from workflow_scripts.launch import timing  # noqa: E402

TARGET_S = 2.0
# stages whose work is bookkeeping, files and image rules (< 2 s at the tiny preset): whatever they
# import is fixed cost; any other stage's model stack is part of its work ('stack')
CHEAP = frozenset(
    {
        "data_collect",
        "data_caption",
        "data_build",
        "data_rl_select",
        "eval_items",
        "eval_system",
        "eval_judge",
        "eval_summary",
        "rl_variant",
        "unitoken_system",
    }
)
PHASES = ("launcher", "job start", "config", "import", "result", "exit", "poll", "finish")


# ------------------------------------------------------------------------------------------- one job
def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2] not in "ZX"  # a zombie has exited


def _marks(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):  # a line half written: read again on the next poll
        return []


class Watch(threading.Thread):
    """Notes when the job's task and controller processes end: once the task has marked its return,
    their pids are checked every 2 ms (before that, the marks file every 10 ms)."""

    def __init__(self, marks: Path, launcher: subprocess.Popen) -> None:
        super().__init__(daemon=True)
        self.marks = marks
        self.launcher = launcher
        self.ended: dict[int, float] = {}

    def run(self) -> None:
        pids: list[int] = []
        while self.launcher.poll() is None:
            if not pids:
                found = {m["event"]: m for m in _marks(self.marks)}
                if "job_return" in found and "submitted" in found:
                    pids = [found["job_return"]["pid"], int(found["submitted"]["jobs"][0])]
                time.sleep(0.01)
                continue
            for pid in pids:
                if pid not in self.ended and not _alive(pid):
                    self.ended[pid] = time.time()
            if len(self.ended) == len(pids):
                return
            time.sleep(0.002)


@dataclass
class JobTiming:
    stage: str
    wall: float
    entry: float
    phases: dict[str, float]
    modules: list[str] = field(default_factory=list)  # heavy libraries and stage modules the task held
    launcher_modules: list[str] = field(default_factory=list)
    stack_modules: list[str] = field(default_factory=list)  # heavy libraries the entry's imports add
    least: float | None = None  # the smallest fixed cost of the runs (a busy machine's noise only adds)

    @property
    def stack(self) -> float:
        """Importing the model stack the stage's work uses: inside its entry, or, for a stage module that
        imports it up front (a training stage's), that module's import. None for a cheap stage."""
        if self.stage in CHEAP:
            return 0.0
        held = any(not m.startswith("workflow_scripts") for m in self.modules)
        return self.entry + (self.phases["import"] if held else 0.0)

    @property
    def fixed(self) -> float:
        return self.wall - self.stack


def time_job(
    stage: str, command: list[str], marks: Path, log: Path, imports: Sequence[str] = ()
) -> JobTiming:
    """Run one launcher call and split its wall time by the marks its processes left. The job imports
    ``imports`` in place of running its entry function."""
    marks.unlink(missing_ok=True)
    env = {
        **os.environ,
        timing.ENV: str(marks),
        timing.SKIP_ENTRY_ENV: "1",
        timing.IMPORTS_ENV: ",".join(imports),
    }
    with open(log, "w") as out:
        began = time.time()
        launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        watch = Watch(marks, launcher)
        watch.start()
        code = launcher.wait()
        ended = time.time()
    watch.join(timeout=5)
    if code != 0:
        raise RuntimeError(
            f"{stage}: the launcher exited with {code}; its log: {log}\n{log.read_text()[-3000:]}"
        )
    at: dict[str, dict] = {}
    every: dict[str, list[float]] = {}
    for mark in _marks(marks):  # an array's elements run one after another: the first one's phases
        at.setdefault(mark["event"], mark)
        every.setdefault(mark["event"], []).append(mark["time"])
    t = {event: mark["time"] for event, mark in at.items()}
    task, controller = at["job_return"]["pid"], int(at["submitted"]["jobs"][0])
    pickle = Path(at["submitted"]["folder"]) / f"{controller}_0_result.pkl"
    pickled = pickle.stat().st_mtime
    task_end = watch.ended.get(task, t["noticed"])
    controller_end = watch.ended.get(controller, t["noticed"])
    phases = {
        "launcher": t["submitted"] - began,
        "job start": t["job_start"] - t["submitted"],
        "config": (t["job_config"] - t["job_start"]) + (t["entry_start"] - t["job_imported"]),
        "import": t["job_imported"] - t["job_config"],
        "result": pickled - t["entry_end"],
        "exit": max(0.0, task_end - pickled) + max(0.0, controller_end - task_end),
        "poll": t["noticed"] - controller_end,
        "finish": ended - every["noticed"][-1],
    }
    return JobTiming(
        stage,
        ended - began,
        sum(end - start for start, end in zip(every["entry_start"], every["entry_end"], strict=True)),
        phases,
        at["job_imported"].get("modules", []),
        at["launcher_done"].get("modules", []),
        [m for m in at["entry_end"].get("modules", []) if m not in at["job_imported"].get("modules", [])],
    )


# --------------------------------------------------------------------------------------- the run
def _user_config(results: Path) -> dict:
    user = yaml.safe_load((REPO / "config.yaml").read_text()) or {}
    return {**user, "results_root": str(results)}


def wildcards(run: Run, stage: str) -> dict[str, str] | None:
    """One job's wildcards for ``stage`` (the first value of each); None when the run has no such job."""
    systems = run.eval.systems
    values = {
        "component": ["encoder"],
        "source": run.sources,
        "phase": run.phases,
        "variant": list(run.cfg.rl.variants),
        "rl_stage": run.rl.stages,
        "system": systems,
        "bench": run.eval.benchmarks,
        "external": run.eval.external_systems,
        "unitoken_stage": run.unitoken.stages,
        "first": systems,
        "second": systems[1:],
    }
    chosen = {}
    for name in STAGES[stage].wildcards:
        if not values.get(name):
            return None
        chosen[name] = values[name][0]
    return chosen


def dag_jobs(results: Path) -> Counter:
    """Launcher calls per stage in the tiny DAG. ``snakemake -n`` cannot plan past a checkpoint, so the
    plan is made with checkpoint selection off, and the selection jobs (one per RL stage) are added. An
    array stage's call runs one job per element (the local launcher: one after another), all timed as
    one call."""
    plan = subprocess.run(
        [
            "snakemake",
            "all",
            "-n",
            "--config",
            f"results_root={results}",
            "eval={selection: {enabled: false}}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    counts = Counter()
    for line in plan.stdout.splitlines():
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if match and match.group(1) in STAGES:
            counts[match.group(1)] = int(match.group(2))
    run = Run.load(_user_config(results), write=False)
    if run.cfg.eval.selection.enabled:
        counts["select_checkpoint"] = len(run.rl.stages)
    return counts


def _submodule(package: str, name: str) -> str:
    candidate = f"{package}.{name}"
    try:
        return candidate if importlib.util.find_spec(candidate) else package
    except ModuleNotFoundError:  # ``package`` is a module, ``name`` one of its attributes
        return package


def _unconditional(node: ast.AST):
    """The nodes under ``node`` that run whenever it runs: none inside a branch (if, a conditional
    expression, and/or, match, except, while)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.If, ast.IfExp, ast.BoolOp, ast.Match, ast.ExceptHandler, ast.While)):
            continue
        yield child
        yield from _unconditional(child)


def entry_imports(target: str) -> list[str]:
    """The modules an entry function (``module:function``) imports whenever it runs: the imports inside
    it and inside the functions of its module it calls, followed call by call, outside branches (a
    stage module imports the model stack where a model is loaded, so the job's 'import' phase does not
    show it; an import in a branch, such as a model captioner's, is left out)."""
    module, _, name = target.partition(":")
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    found: list[str] = []
    seen, todo = set(), [name]
    while todo:
        function = functions.get(todo.pop())
        if function is None or function.name in seen:
            continue
        seen.add(function.name)
        for node in _unconditional(function):
            if isinstance(node, ast.ImportFrom) and node.module:  # a name, or a submodule of the package
                found += [_submodule(node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                found += [alias.name for alias in node.names]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                todo.append(node.func.id)
    return list(dict.fromkeys(found))


def import_profile(modules: Sequence[str], top: int = 5) -> list[tuple[str, float]]:
    """Where importing ``modules`` in a fresh interpreter spends its time: ``python -X importtime``'s own
    time of every module summed per top-level package (seconds), the slowest first."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {', '.join(modules)}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    spent: Counter = Counter()
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if match:
            spent[match.group(2).split(".")[0]] += int(match.group(1)) / 1e6
    return spent.most_common(top)


# ------------------------------------------------------------------------------------------ report
def median_timing(runs: list[JobTiming]) -> JobTiming:
    phases = {p: statistics.median(r.phases[p] for r in runs) for p in PHASES}
    wall = statistics.median(r.wall for r in runs)
    entry = statistics.median(r.entry for r in runs)
    last = runs[-1]
    median = JobTiming(
        last.stage, wall, entry, phases, last.modules, last.launcher_modules, last.stack_modules
    )
    median.least = min(r.fixed for r in runs)
    return median


def table(rows: list[JobTiming], counts: Counter, elements: dict[str, int]) -> list[str]:
    head = (
        f"{'stage':<22}{'jobs':>5}"
        + "".join(f"{p:>10}" for p in PHASES)
        + f"{'fixed':>8}{'(min)':>7}{'stack':>8}  heavy libraries: job | entry"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        heavy = [m for m in row.modules if not m.startswith("workflow_scripts")]
        lines.append(
            f"{row.stage + (f' x{elements[row.stage]}' if row.stage in elements else ''):<22}"
            + f"{counts.get(row.stage, 0):>5}"
            + "".join(f"{row.phases[p]:>10.2f}" for p in PHASES)
            + f"{row.fixed:>8.2f}{row.least:>7.2f}{row.stack:>8.2f}  "
            + f"{','.join(heavy) or '-'} | {','.join(row.stack_modules) or '-'}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="*", default=JOBS, choices=JOBS, help="stage kinds (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per stage kind (median)")
    parser.add_argument("--imports", action="store_true", help="each stage module's slowest imports")
    parser.add_argument("--no-dag", action="store_true", help="skip counting the tiny DAG's jobs")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    args = parser.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="umm-job-overhead-"))
    results = root / "results"
    run = Run.load(_user_config(results), write=True)
    counts = Counter() if args.no_dag else dag_jobs(root / "plan")
    marks, logs = root / "marks.jsonl", root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    print(
        f"launcher {run.cfg.launcher.kind}, poll cap {run.cfg.launcher.poll_seconds} s; seconds per job, "
        f"median of {args.repeats}; each entry function is replaced by the imports it makes when it runs "
        "(stack: importing the model stack a stage's work uses, there or up front); fixed = wall - stack; "
        "an array's (xN) phases are its first element's, its fixed and stack cover all N"
    )
    rows = []
    for stage in args.stages:
        wc = wildcards(run, stage)
        if wc is None:
            print(f"{stage}: no job in this run, skipped")
            continue
        command = run.launch_command(stage, wc)
        imports = entry_imports(STAGES[stage].run)
        runs = [
            time_job(stage, command, marks, logs / f"{stage}.{k}.log", imports) for k in range(args.repeats)
        ]
        rows.append(median_timing(runs))
        stray = rows[-1].launcher_modules
        if stray:
            print(f"{stage}: the launcher process imported {', '.join(stray)}")
    elements = {s: STAGES[s].array(run.cfg) for s in args.stages if STAGES[s].array}
    print("\n".join(table(rows, counts, elements)))
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    per_job = {r.stage: r.fixed / elements.get(r.stage, 1) for r in rows}  # an array call runs N jobs
    least = {r.stage: r.least / elements.get(r.stage, 1) for r in rows}
    worst = max(per_job, key=per_job.get)
    print(
        f"fixed cost per job: mean {statistics.mean(per_job.values()):.2f} s, max {per_job[worst]:.2f} s "
        f"({worst}); smallest run of each kind: mean {statistics.mean(least.values()):.2f} s, max "
        f"{max(least.values()):.2f} s; target <= {TARGET_S} s per job: "
        + ("met" if per_job[worst] <= TARGET_S else "NOT met")
    )
    if counts:
        measured = {r.stage: r for r in rows}
        jobs = sum(counts[s] for s in measured)
        total = sum(counts[s] * r.fixed for s, r in measured.items())
        stack = sum(counts[s] * r.stack for s, r in measured.items())
        missing = sorted(set(counts) - set(measured))
        print(
            f"sum over the tiny DAG's {jobs} launcher jobs: {total:.0f} s of fixed cost, plus {stack:.0f} s "
            "of model-stack imports inside entries"
            + (f" (not measured: {', '.join(missing)})" if missing else "")
        )
    if args.imports:
        print("\nwhere a job's stage module and its entry's imports spend their time (s per package):")
        for stage in args.stages:
            target = STAGES[stage].run
            found = import_profile([target.partition(":")[0], *entry_imports(target)])
            print(f"  {stage:<22} " + ", ".join(f"{n} {s:.2f}" for n, s in found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
