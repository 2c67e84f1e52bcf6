"""Print what every stage of a config asks Slurm for, without a cluster or any model directory:

    python -m workflow_scripts.launch.plan --configfile paper.example.yaml
    python -m workflow_scripts.launch.plan --configfile paper.example.yaml --config seed=1 --sbatch

The config resolves as the Snakefile resolves it (config.yaml, then each --configfile, then --config,
parsed by Snakemake's own functions); the resources come from the sbatch file submitit would submit
(:func:`workflow_scripts.launch.launcher.sbatch_script`), so the table is what Slurm would read; the
stages are those of Snakemake's rule graph of the config (``--rulegraph``: planned, never run).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workflow_scripts.catalog import JOBS, STAGES, resources
from workflow_scripts.config.loader import parse, resolve
from workflow_scripts.config.typed import ConfigError
from workflow_scripts.dag.run import PLAN_ONLY
from workflow_scripts.launch.launcher import sbatch_script
from workflow_scripts.layout import RunLayout

SNAKEFILE = Path(__file__).resolve().parents[2] / "Snakefile"

COLUMNS = (
    "stage",
    "jobs",
    "engine",
    "nodes",
    "ntasks-per-node",
    "gpus-per-node",
    "cpus-per-task",
    "mem",
    "time",
    "partition",
)


@dataclass(frozen=True)
class StagePlan:
    stage: str  # the stage, and "[wildcard=value, ...]" where its jobs ask for different resources
    jobs: str  # how many jobs of these resources the DAG holds ("N x array 0-K%P" for job arrays)
    sbatch: str  # the sbatch file text of one of them
    engine: str = "-"  # how a training stage wraps its model (loop.distributed), "-" for the others

    def settings(self) -> dict[str, str]:
        return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", self.sbatch, flags=re.M))

    def row(self) -> list[str]:
        settings = self.settings()
        cells = [self.stage, self.jobs, self.engine]
        cells += [settings.get(c, "0" if c == "gpus-per-node" else "-") for c in COLUMNS[3:]]
        return cells


def user_config(configfiles: list[str], entries: list[str], base: Path | None = Path("config.yaml")) -> dict:
    """The config Snakemake hands the Snakefile: ``base`` (the Snakefile's configfile), the configfiles
    and the --config entries, each merged over the last with Snakemake's own functions."""
    from snakemake.cli import parse_config
    from snakemake.common.configfile import load_configfile
    from snakemake.utils import update_config

    config: dict[str, Any] = {}
    for path in ([base] if base is not None and base.exists() else []) + [Path(p) for p in configfiles]:
        update_config(config, load_configfile(str(path)))
    update_config(config, parse_config(entries))
    return config


def jobs_in_dag(user: dict) -> list[tuple[str, dict[str, str]]]:
    """Every launcher job this config's DAG holds, as (stage, wildcards), from Snakemake's dry run of the
    config (a planning run: no model directory is needed, nothing is written)."""
    with tempfile.TemporaryDirectory() as workdir:
        # the Snakefile reads config.yaml from its working directory; the merged user config is that file
        (Path(workdir) / "config.yaml").write_text(yaml.safe_dump({**user, PLAN_ONLY: True}))
        command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", workdir, "-n"]
        result = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    if result.returncode != 0:
        raise ConfigError(f"snakemake could not plan this config:\n{result.stderr[-3000:]}")
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:\n)", result.stdout):
        header = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):\n", block)
        if header is None or header.group(1) not in JOBS:
            continue
        found = re.search(r"^    wildcards: (.*)$", block, flags=re.M)
        pairs = found.group(1).split(", ") if found else []
        jobs.append((header.group(1), dict(pair.split("=", 1) for pair in pairs)))
    return sorted(jobs, key=lambda job: JOBS.index(job[0]))


def plan(user: dict, jobs: list[tuple[str, dict[str, str]]] | None = None) -> list[StagePlan]:
    """One row per stage, or per group of its jobs that ask for the same resources (``jobs``: the DAG's,
    from :func:`jobs_in_dag` when not given)."""
    plain = resolve({k: v for k, v in user.items() if k != PLAN_ONLY})  # this command always only plans
    cfg = parse(plain)
    layout = RunLayout.of(cfg)
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    with tempfile.TemporaryDirectory() as scratch:  # submitit renders paths under a folder it names
        for stage, wildcards in jobs_in_dag(user) if jobs is None else jobs:
            name = f"umm-{cfg.run_name}-{stage}"
            text = sbatch_script(Path(scratch), resources(cfg, stage, wildcards), name)
            text = text.replace(scratch, str(layout.jobs(stage)))
            engine = STAGES[stage].engine(cfg, wildcards) or "-"
            groups.setdefault((stage, text, engine), []).append(wildcards)
    plans = []
    for (stage, text, engine), members in groups.items():
        label = stage
        if sum(s == stage for s, _, _ in groups) > 1:  # name the wildcard values that set this group apart
            every = [m for (s, _, _), ms in groups.items() if s == stage for m in ms]
            apart = []
            for key in sorted(members[0]):
                values = sorted({m[key] for m in members})
                if len(values) < len({m[key] for m in every}):
                    apart.append(f"{key}={'|'.join(values)}")
            label += f"[{', '.join(apart)}]"
        count = STAGES[stage].array(cfg) if STAGES[stage].array else None
        jobs = str(len(members))
        if count:
            jobs += f" x array 0-{count - 1}%{cfg.launcher.array_parallelism}"
        plans.append(StagePlan(label, jobs, text, engine))
    return plans


def table(plans: list[StagePlan]) -> str:
    rows = [list(COLUMNS), *(p.row() for p in plans)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow_scripts.launch.plan", description=__doc__)
    parser.add_argument("--configfile", nargs="+", default=[], help="config files, as for snakemake")
    parser.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE", help="as for snakemake")
    parser.add_argument("--sbatch", action="store_true", help="also print every stage's sbatch file")
    parser.add_argument("--no-cost", action="store_true", help="skip the projected GPU-hours (FLOP counting)")
    parser.add_argument("--directory", type=Path, default=Path("."), help="where config.yaml is")
    args = parser.parse_args(argv)
    try:
        user = user_config(args.configfile, args.config, args.directory / "config.yaml")
        jobs = jobs_in_dag(user)
        plans = plan(user, jobs)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = parse(resolve({k: v for k, v in user.items() if k != PLAN_ONLY}))
    print(
        f"# run '{cfg.run_name}' (preset {cfg.preset}), launcher.kind={cfg.launcher.kind}; "
        "mem per node, time in minutes"
    )
    print(table(plans))
    if not args.no_cost:
        from workflow_scripts.cost import project  # FLOP counting imports diffusers: only when asked

        projected = project.projection(cfg, [(s, w) for s, w in jobs if s in project.MODELS])
        print(
            f"\n# projected GPU-hours at {projected.mfu:.0%} MFU of {projected.peak_tflops:g} TFLOP/s "
            "(launcher.cost; assumptions: python -m workflow_scripts.cost)"
        )
        print(project.table(projected))
    if args.sbatch:
        for p in plans:
            print(f"\n# ---- {p.stage} ----\n{p.sbatch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
