"""Wall time and training speed of every tiny-preset stage: ``python bench/bench_tiny.py [WORKDIR]``.

Runs ``snakemake all`` on the tiny preset in WORKDIR (a fresh temporary directory by default), then
prints each rule's wall time (Snakemake's benchmark files) and each training stage's steps/s (its
metrics log, first step excluded as warm-up).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="umm-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yaml"
    if not config.exists():
        config.write_text("preset: tiny\n")
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "all"], cwd=workdir, check=True
    )
    total = time.perf_counter() - began
    run = next((workdir / "results").iterdir())
    print(f"\ntiny DAG `all` in {workdir}: {total:.1f} s wall on this machine\n")
    print(f"{'rule':<32} {'wall s':>8} {'max RSS MB':>11} {'steps':>6} {'steps/s':>8}")
    for tsv in sorted((run / "benchmarks").glob("*.tsv")):
        with open(tsv) as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        steps, rate = _training_speed(run, tsv.stem)
        print(f"{tsv.stem:<32} {float(row['s']):>8.1f} {float(row['max_rss']):>11.0f} {steps:>6} {rate:>8}")
    return 0


def _training_speed(run: Path, rule: str) -> tuple[str, str]:
    stage = rule.replace(".", "_")
    metrics = run / "train" / stage / "metrics.jsonl"
    if not metrics.exists():
        return "", ""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    timed = rows[1:] or rows
    seconds = sum(r["step_seconds"] for r in timed)
    return str(len(rows)), f"{len(timed) / seconds:.1f}"


if __name__ == "__main__":
    sys.exit(main())
