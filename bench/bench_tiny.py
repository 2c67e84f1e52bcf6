"""Wall time and speed of every tiny-preset stage: ``python bench/bench_tiny.py [WORKDIR]``.

Runs ``snakemake all`` on the tiny preset in WORKDIR (a fresh temporary directory by default), then
prints each rule's wall time (Snakemake's benchmark files), each training stage's steps/s and seconds per
step (its metrics log, first step excluded as warm-up), and each benchmark's items/s (items of a
generation shard over the shard job's wall time, process start and model loading included).
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
    header = ("wall s", "max RSS MB", "steps", "steps/s", "s/step", "items/s")
    print(f"{'rule':<44} " + " ".join(f"{h:>10}" for h in header))
    for tsv in sorted((run / "benchmarks").glob("*.tsv")):
        with open(tsv) as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        seconds, rss = float(row["s"]), float(row["max_rss"])
        steps, rate, per_step = _training_speed(run, tsv.stem)
        items = _items_per_second(run, tsv.stem, seconds)
        cells = (f"{seconds:.1f}", f"{rss:.0f}", steps, rate, per_step, items)
        print(f"{tsv.stem:<44} " + " ".join(f"{c:>10}" for c in cells))
    return 0


def _training_speed(run: Path, rule: str) -> tuple[str, str, str]:
    stage = rule.replace(".", "_")
    metrics = run / "train" / stage / "metrics.jsonl"
    if not metrics.exists():
        return "", "", ""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    timed = rows[1:] or rows
    seconds = sum(r["step_seconds"] for r in timed)
    return str(len(rows)), f"{len(timed) / seconds:.1f}", f"{seconds / len(timed):.2f}"


def _items_per_second(run: Path, rule: str, seconds: float) -> str:
    if not rule.startswith("eval_generate."):
        return ""
    _, system, bench, shard = rule.split(".", 3)
    records = run / "eval" / system / bench / f"shard-{shard}" / "records.jsonl"
    items = {json.loads(line)["item_id"] for line in records.read_text().splitlines() if line.strip()}
    return f"{len(items) / seconds:.2f}"


if __name__ == "__main__":
    sys.exit(main())
