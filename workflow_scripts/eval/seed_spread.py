"""The seed-to-seed spread of a system's scores, from runs of one config that differ only in their seed.

python -m workflow_scripts.eval.seed_spread results/tiny results/tiny_s1 results/tiny_s2 \\
    [--bench unified_bench] [--system none] [--system 2a ...]

Prints each run's value of every metric of ``<run>/eval/<system>/<bench>/scores.json`` (the warehouse's
metric names) with the spread (max - min over the runs) of the first system, each further system's gain
over the first per run, and the headline spreads as ``eval.seed_spread`` holds them. Refuses runs whose
resolved configs differ in anything but ``seed`` and ``run_name``: their spread would not be a seed's.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.warehouse.ingest import flat_config, score_metrics

SEED_KEYS = frozenset({"seed", "run_name"})
HEADLINE = ("overall", "reward")  # the metrics the report's RL rows may compare with (report/build.py)


@dataclass(frozen=True)
class SeedRun:
    folder: Path
    seed: int
    scores: dict[str, dict[str, float]]  # system -> metric -> value


def load_runs(folders: list[Path], bench: str, systems: list[str]) -> list[SeedRun]:
    """Each run's scores, after checking that the runs are one config under different seeds."""
    if len(folders) < 2:
        raise ValueError("a seed spread needs at least 2 runs (the README measures it with 3)")
    configs = {}
    for folder in folders:
        path = folder / "config.resolved.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: not a run directory (no resolved config); run the DAG first")
        configs[folder] = flat_config(json.loads(path.read_text()))
    first, *rest = folders
    for folder in rest:
        keys = set(configs[first]) | set(configs[folder])
        differ = sorted(k for k in keys if configs[first].get(k) != configs[folder].get(k))
        if set(differ) - SEED_KEYS:
            raise ValueError(
                f"{folder} differs from {first} in {sorted(set(differ) - SEED_KEYS)}, not only in "
                f"{sorted(SEED_KEYS)}: a spread over these runs would not be a seed's"
            )
    seeds = [configs[f]["seed"] for f in folders]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"runs {[str(f) for f in folders]} share a seed ({seeds}): give each its own")
    runs = []
    for folder, seed in zip(folders, seeds, strict=True):
        scores = {}
        for system in systems:
            path = folder / "eval" / system / bench / "scores.json"
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} is missing: run `snakemake --cores 2 {path} --config seed={seed} "
                    f"run_name={folder.name}` first"
                )
            scores[system] = score_metrics(json.loads(path.read_text()))
        runs.append(SeedRun(folder, seed, scores))
    return runs


def spread(runs: list[SeedRun], system: str) -> dict[str, float]:
    """max - min over the runs of each metric every run has."""
    metrics = set.intersection(*(set(r.scores[system]) for r in runs))
    values = {m: [r.scores[system][m] for r in runs] for m in metrics}
    return {m: max(v) - min(v) for m, v in values.items()}


def gains(runs: list[SeedRun], system: str, base: str) -> dict[str, list[float]]:
    """Per metric: ``system`` - ``base`` in each run (same seed, so same data and initialisation)."""
    metrics = set.intersection(*(set(r.scores[system]) & set(r.scores[base]) for r in runs))
    return {m: [r.scores[system][m] - r.scores[base][m] for r in runs] for m in metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workflow_scripts.eval.seed_spread",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories: results/<run_name>")
    parser.add_argument("--bench", default="unified_bench")
    parser.add_argument("--system", action="append", help="the first is the spread's (default: none)")
    args = parser.parse_args(argv)
    systems = args.system or ["none"]
    try:
        runs = load_runs(args.runs, args.bench, systems)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    base = systems[0]
    spreads = spread(runs, base)
    width = max(len(m) for r in runs for m in r.scores[base])
    print(f"{args.bench}, system {base}; seeds " + ", ".join(str(r.seed) for r in runs))
    for metric, value in sorted(spreads.items()):
        values = "  ".join(f"{r.scores[base][metric]:9.4f}" for r in runs)
        print(f"  {metric:<{width}}  {values}  spread {value:.4f}")
    for system in systems[1:]:
        print(f"{system} - {base}, per seed:")
        for metric, values in sorted(gains(runs, system, base).items()):
            print(f"  {metric:<{width}}  " + "  ".join(f"{v:+9.4f}" for v in values))
    headline = {m: v for m, v in sorted(spreads.items()) if m in HEADLINE}
    if headline:  # as eval.seed_spread holds it
        pairs = ", ".join(f"{args.bench}.{m}: {v:.4f}" for m, v in headline.items())
        print(f"eval.seed_spread: {{{pairs}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
