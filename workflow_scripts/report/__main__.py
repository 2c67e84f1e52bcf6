"""Reports from the warehouse.

python -m workflow_scripts.report run --db DB --run tiny --run-dir results/tiny --dag D --out R
python -m workflow_scripts.report index --db DB --out results/index.html [--report RUN=PATH ...]
python -m workflow_scripts.report compare --db results/umm.duckdb --first A --second B --out compare.html
python -m workflow_scripts.report dag --snakefile Snakefile --configfile C --out dag.svg [--engine auto]

The dag command needs no system binary (graphviz's `dot` is used only when on PATH, see
workflow_scripts/report/dag.py) and always exits 0: if the graph cannot be drawn, dag.svg says why.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workflow_scripts.report.dag import ENGINES, write_rulegraph


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workflow_scripts.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("--db", required=True)
    one.add_argument("--run", required=True)
    one.add_argument("--run-dir", required=True)
    one.add_argument("--dag", required=True)
    one.add_argument("--out", required=True)
    index = sub.add_parser("index")
    index.add_argument("--db", required=True)
    index.add_argument("--out", required=True)
    index.add_argument("--report", action="append", default=[], metavar="RUN=PATH")
    compare = sub.add_parser("compare")
    compare.add_argument("--db", required=True)
    compare.add_argument("--first", required=True)
    compare.add_argument("--second", required=True)
    compare.add_argument("--out", required=True)
    dag = sub.add_parser("dag")
    dag.add_argument("--snakefile", required=True)
    dag.add_argument("--configfile", required=True)
    dag.add_argument("--out", required=True)
    dag.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="auto: graphviz's dot when on PATH, else the built-in layout; builtin; dot (graphviz only)",
    )
    args = parser.parse_args(argv)
    if args.command == "dag":
        engine = write_rulegraph(args.snakefile, args.configfile, Path(args.out), args.engine)
        print(f"rule graph drawn by: {engine}")
        print(f"wrote {args.out}")
        return 0
    # imported only here: the dag command needs nothing beyond the standard library, snakemake and scipy
    # (jinja2, duckdb and matplotlib are the pages' business)
    from workflow_scripts.report.build import render_compare, render_index, render_run

    if args.command == "run":
        render_run(Path(args.db), args.run, Path(args.run_dir), Path(args.dag), Path(args.out))
    elif args.command == "index":
        reports = dict(r.split("=", 1) for r in args.report)
        render_index(Path(args.db), Path(args.out), reports)
    else:
        render_compare(Path(args.db), args.first, args.second, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
