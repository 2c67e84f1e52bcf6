"""Print what every stage of a config asks Slurm for, without Snakemake, a cluster or any model directory:

    python -m workflow_scripts.launch.plan --configfile paper.example.yaml
    python -m workflow_scripts.launch.plan --configfile paper.example.yaml --config seed=1 --sbatch

The config resolves as the Snakefile resolves it (config.yaml, then each --configfile, then --config,
parsed by Snakemake's own functions); the resources come from the sbatch file submitit would submit
(:func:`workflow_scripts.launch.launcher.sbatch_script`), so the table is what Slurm would read.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflow_scripts.catalog import JOBS
from workflow_scripts.config.loader import parse, resolve
from workflow_scripts.config.typed import ConfigError
from workflow_scripts.dag.run import PLAN_ONLY, Run
from workflow_scripts.launch.launcher import sbatch_script
from workflow_scripts.layout import RunLayout

COLUMNS = (
    "stage",
    "jobs",
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
    stage: str
    jobs: str  # "1", or "array 0-N%K" for a stage that runs as a job array
    sbatch: str  # the sbatch file text

    def settings(self) -> dict[str, str]:
        return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", self.sbatch, flags=re.M))

    def row(self) -> list[str]:
        settings = self.settings()
        cells = [self.stage, self.jobs]
        cells += [settings.get(c, "0" if c == "gpus-per-node" else "-") for c in COLUMNS[2:]]
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


def stages_in_dag(run: Run) -> list[str]:
    """The launcher stages this config's DAG contains, in the launcher's order."""
    cfg = run.cfg
    present = {"data_collect", "data_caption", "data_build", "pretrain_encoder", "pretrain_decoder"}
    if cfg.models.source == "tiny":
        present.add("build_tiny_model")
    if run.rl.stages:
        present.add("data_rl_select")
        present |= {"rl_decoder" if s.startswith("rl_decoder_") else s for s in run.rl.stages}
        if cfg.eval.selection.enabled:
            present.add("select_checkpoint")
    if cfg.rl.variants:
        present.add("rl_variant")
    if run.unitoken.stages:
        present |= {"unitoken_pretokenize", "unitoken_train", "unitoken_system"}
        if cfg.models.source == "tiny":
            present.add("unitoken_vq")
    if run.eval.benchmarks:
        present |= {"eval_items", "eval_generate", "eval_score", "eval_summary"}
        if run.eval.external_systems:
            present.add("eval_system")
        if run.eval.judge_pairs:
            present.add("eval_judge")
    return [s for s in JOBS if s in present]


def plan(user: dict) -> list[StagePlan]:
    plain = resolve({k: v for k, v in user.items() if k != PLAN_ONLY})  # this command always only plans
    cfg = parse(plain)
    # plan_only: the model directories may not exist yet, and nothing is checked or written
    run = Run(plain, cfg, RunLayout.of(cfg), plan_only=True)
    arrays = {"eval_generate": cfg.eval.shards, "unitoken_pretokenize": cfg.unitoken.pretokenize.shards}
    plans = []
    with tempfile.TemporaryDirectory() as scratch:  # submitit renders paths under a folder it names
        for stage in stages_in_dag(run):
            resources = cfg.launcher.resources(stage)
            text = sbatch_script(Path(scratch), resources, f"umm-{cfg.run_name}-{stage}")
            text = text.replace(scratch, str(run.layout.jobs(stage)))
            count = arrays.get(stage)
            jobs = f"array 0-{count - 1}%{cfg.launcher.array_parallelism}" if count else "1"
            plans.append(StagePlan(stage, jobs, text))
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
    parser.add_argument("--directory", type=Path, default=Path("."), help="where config.yaml is")
    args = parser.parse_args(argv)
    try:
        user = user_config(args.configfile, args.config, args.directory / "config.yaml")
        plans = plan(user)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = parse(resolve({k: v for k, v in user.items() if k != PLAN_ONLY}))
    print(
        f"# run '{cfg.run_name}' (preset {cfg.preset}), launcher.kind={cfg.launcher.kind}; "
        "mem per node, time in minutes"
    )
    print(table(plans))
    if args.sbatch:
        for p in plans:
            print(f"\n# ---- {p.stage} ----\n{p.sbatch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
