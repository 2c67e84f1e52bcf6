"""Warehouse commands.

    python -m workflow_scripts.warehouse ingest KIND --db DB --run RUN --marker M [--input N=P ...]
    python -m workflow_scripts.warehouse query "select ..." [--db results/umm.duckdb]

KIND is data, training, eval, judge or run. An ingest replaces its slice in one transaction under the
warehouse's write lock, then writes the marker file (row counts) that Snakemake tracks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from workflow_scripts import atomic
from workflow_scripts.warehouse import ingest
from workflow_scripts.warehouse.db import query, writer


def _pairs(values: list[str]) -> dict[str, str]:
    return dict(v.split("=", 1) for v in values)


def run_ingest(kind: str, db: str, run: str, inputs: dict[str, str], wildcards: dict[str, str]) -> dict:
    with writer(db) as con:
        if kind == "data":
            return {"data_images": ingest.data(con, run, Path(inputs["manifest"]))}
        if kind == "training":
            selection = Path(inputs["selection"]) if "selection" in inputs else None
            return ingest.training(con, run, wildcards["train_stage"], Path(inputs["final"]), selection)
        if kind == "eval":
            return ingest.evaluation(
                con,
                run,
                wildcards["system"],
                wildcards["bench"],
                Path(inputs["records"]),
                Path(inputs["scores"]),
            )
        if kind == "judge":
            return {"judgements": ingest.judgement(con, run, Path(inputs["judgement"]))}
        if kind == "run":
            return ingest.run(con, run, Path(inputs["run_dir"]))
    raise SystemExit(f"unknown ingest kind {kind!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workflow_scripts.warehouse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("ingest")
    load.add_argument("kind", choices=["data", "training", "eval", "judge", "run"])
    load.add_argument("--db", required=True)
    load.add_argument("--run", required=True)
    load.add_argument("--marker", required=True)
    load.add_argument("--input", action="append", default=[])
    load.add_argument("--wildcard", action="append", default=[])
    ask = sub.add_parser("query")
    ask.add_argument("sql")
    ask.add_argument("--db", default="results/umm.duckdb")
    args = parser.parse_args(argv)
    if args.command == "query":
        print(query(args.db, args.sql).to_string(index=False))
        return 0
    counts = run_ingest(args.kind, args.db, args.run, _pairs(args.input), _pairs(args.wildcard))
    atomic.write_json(args.marker, {"kind": args.kind, "run": args.run, "rows": counts, "time": time.time()})
    print(f"ingested {args.kind} for {args.run}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
