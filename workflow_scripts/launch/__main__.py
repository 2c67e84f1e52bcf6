"""Run one stage through the configured launcher: ``python -m workflow_scripts.launch STAGE ...``.

Snakemake rules call this; it is also the way to run a stage by hand with the same guarantees.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
from pathlib import Path

from workflow_scripts.catalog import JOBS, STAGES, resources
from workflow_scripts.config.loader import digest
from workflow_scripts.launch import lease, timing
from workflow_scripts.launch.job import JobSpec, StageJob, configure_logging, load_config, loaded_modules
from workflow_scripts.launch.launcher import JobFailedError, run_many
from workflow_scripts.layout import RunLayout

log = logging.getLogger("workflow_scripts.launch")


def _pairs(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=VALUE, got {value!r}")
        out[key] = item
    return out


def _function(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow_scripts.launch", description=__doc__)
    parser.add_argument("stage", choices=sorted(JOBS))
    parser.add_argument("--config", required=True, help="the run's config.resolved.json")
    parser.add_argument("--stage-hash", required=True, help="hash of the stage's config view (from the DAG)")
    parser.add_argument("--wildcard", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--output", action="append", default=[], metavar="NAME=PATH")
    args = parser.parse_args(argv)
    timing.mark("launcher_main", stage=args.stage)

    configure_logging()
    lease.watch_owner()  # never outlive the Snakemake that started us (a kill -9 leaves us orphaned)
    spec = JobSpec(
        stage=args.stage,
        config=args.config,
        stage_hash=args.stage_hash,
        wildcards=_pairs(args.wildcard),
        inputs=_pairs(args.input),
        outputs=_pairs(args.output),
    )
    cfg, _ = load_config(spec)
    timing.mark("launcher_config")
    layout = RunLayout.of(cfg)
    job_resources = resources(cfg, args.stage, spec.wildcards)
    spec = JobSpec(**{**spec.__dict__, "threads": job_resources.cpus_per_task})
    label = "_".join([args.stage, *spec.wildcards.values()])
    entry = STAGES[args.stage]
    specs = [spec]
    if entry.array:
        elements = entry.array(cfg)
        specs = [dataclasses.replace(spec, array_index=k) for k in range(elements)]
    try:
        per_job = run_many(
            [StageJob(s, entry.run) for s in specs],
            kind=cfg.launcher.kind,
            folder=layout.jobs(label),
            resources=job_resources,
            name=f"umm-{cfg.run_name}-{label}",
            poll_seconds=cfg.launcher.poll_seconds,
            journal=layout.root / "logs" / "jobs.jsonl",
            attach_key=digest(dataclasses.asdict(spec)),
            array_parallelism=cfg.launcher.array_parallelism,
            # a recorded job that completed counts only while what it wrote is there (--rerun-incomplete
            # deletes an interrupted rule's outputs); a gather step writes them here, from the results
            outputs=[] if entry.gather else [Path(p) for p in spec.outputs.values()],
        )
    except JobFailedError as err:
        log.error("%s", err)
        return 1
    except KeyboardInterrupt:
        log.error("%s: interrupted", label)
        return 130
    results = [result for job in per_job for result in job]  # tasks of one job, or one per element
    if entry.gather and not timing.skip_entry():
        _function(entry.gather)(spec, results)
    log.info("%s done: %s", label, json.dumps(results[0], default=str)[:500] if results else "")
    timing.mark("launcher_done", modules=loaded_modules())
    return 0


if __name__ == "__main__":
    sys.exit(main())
