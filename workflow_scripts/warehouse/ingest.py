"""Loaders from stage outputs into warehouse rows. Each ingest replaces exactly its own slice."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq

from workflow_scripts.catalog import STAGES, stage_hash, view_wildcards
from workflow_scripts.config.loader import digest, load_preset
from workflow_scripts.fingerprint import fingerprint
from workflow_scripts.train.metrics import read as read_metrics
from workflow_scripts.warehouse.db import connect, replace_rows


def data(con: duckdb.DuckDBPyConnection, run_id: str, manifest: Path) -> int:
    with connect(manifest, read_only=True) as src:  # a user's shell on the manifest makes it wait
        rows = (
            src.execute(
                "SELECT image_id, source, split, verdict, reason, caption_words, width, height FROM images"
            )
            .to_arrow_table()
            .to_pylist()
        )
    return replace_rows(con, "data_images", {"run_id": run_id}, [{"run_id": run_id, **r} for r in rows])


def training(
    con: duckdb.DuckDBPyConnection, run_id: str, stage: str, final: Path, selection: Path | None
) -> dict:
    metrics = []
    for row in read_metrics(final / "metrics.jsonl"):
        for name, value in row.items():
            if name != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                metrics.append(
                    {
                        "run_id": run_id,
                        "stage": stage,
                        "step": row["step"],
                        "metric": name,
                        "value": float(value),
                    }
                )
    # held-out figures at the stage's last step: an autoencoder's (reconstruction.json), a reward backbone's
    # (validation.json)
    for quality in (final / "reconstruction.json", final / "validation.json"):
        if not (quality.exists() and metrics):
            continue
        last = max(m["step"] for m in metrics)
        for name, value in json.loads(quality.read_text()).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                row = {"run_id": run_id, "stage": stage, "step": last, "metric": f"val_{name}"}
                metrics.append({**row, "value": float(value)})
    chosen = json.loads(selection.read_text()) if selection else None
    scores = {c["step"]: c["metric"] for c in chosen["candidates"]} if chosen else {}
    checkpoints = []
    for folder in sorted((final.parent / "checkpoints").glob("step_*")):
        meta_file = folder / "checkpoint.json"
        if not meta_file.exists():
            continue
        meta = json.loads(meta_file.read_text())
        model = folder / "model"
        checkpoints.append(
            {
                "run_id": run_id,
                "stage": stage,
                "step": meta["step"],
                "path": str(model),
                "identity": meta["identity"],
                "fingerprint": fingerprint(model) if model.exists() else None,
                "selected": bool(chosen) and chosen["selected_step"] == meta["step"],
                "selection_metric": chosen["metric"] if chosen else None,
                "selection_value": scores.get(meta["step"]),
            }
        )
    key = {"run_id": run_id, "stage": stage}
    return {
        "train_metrics": replace_rows(con, "train_metrics", key, metrics),
        "checkpoints": replace_rows(con, "checkpoints", key, checkpoints),
    }


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[prefix] = float(value)


def score_metrics(summary: dict) -> dict[str, float]:
    """A benchmark's scores.json as the warehouse's metric -> value (eval_scores.metric)."""
    flat: dict[str, float] = {}
    # GenEval++ adds all_items (accuracy over every item), missing_images and unparsable (both count wrong);
    # eval/learning.py adds Unified-Bench's checker.* and captions.* and GenEval's floor.* (each floor,
    # ceiling beside its figure: checker.floor.rate, checker.ceiling.rate, floor.overall, ...); Unified-Bench
    # adds reward, the RL stages' reconstruction reward on its images
    for part in (
        *("overall", "per_task", "correct_images", "correct_prompts", "questions", "images"),
        *("all_items", "missing_images", "unparsable", "checker", "captions", "floor", "reward"),
    ):
        if part in summary:
            _flatten("" if part == "per_task" else part, summary[part], flat)
    for name, stats in summary.get("backbones", {}).items():  # Unified-Bench: the average is the column
        flat[name] = float(stats["avg"])
        flat.update({f"{name}.{k}": float(v) for k, v in stats.items() if k != "avg"})
    return flat


def evaluation(
    con: duckdb.DuckDBPyConnection, run_id: str, system: str, bench: str, records: Path, scores: Path
) -> dict:
    samples = []
    for record in pq.read_table(records).to_pylist():
        key = "/".join(str(record[k]) for k in ("item_id", "sample", "rotation") if k in record)
        samples.append(
            {
                "run_id": run_id,
                "system": system,
                "benchmark": bench,
                "sample_key": key,
                "item_id": record["item_id"],
                "record": json.dumps(record, default=str),
            }
        )
    summary = json.loads(scores.read_text())
    flat = score_metrics(summary)
    values = [
        {"run_id": run_id, "system": system, "benchmark": bench, "metric": k, "value": v}
        for k, v in flat.items()
    ]
    key = {"run_id": run_id, "system": system, "benchmark": bench}
    # a score written before records carried a protocol gets an empty one: the report shows "—"
    protocol = [{**key, "protocol": json.dumps(summary.get("protocol") or {})}]
    return {
        "eval_samples": replace_rows(con, "eval_samples", key, samples),
        "eval_scores": replace_rows(con, "eval_scores", key, values),
        "eval_protocols": replace_rows(con, "eval_protocols", key, protocol),
    }


def judgement(con: duckdb.DuckDBPyConnection, run_id: str, path: Path) -> int:
    result = json.loads(path.read_text())
    rows = [
        {
            "run_id": run_id,
            "system": result["system"],
            "baseline": result["baseline"],
            "judge": name,
            "win": r["win"],
            "tie": r["tie"],
            "loss": r["loss"],
            "items": r["items"],
        }
        for name, r in {**result["judges"], "mean": {**result["mean"], "items": None}}.items()
    ]
    key = {"run_id": run_id, "system": result["system"], "baseline": result["baseline"]}
    return replace_rows(con, "judgements", key, rows)


def paper(con: duckdb.DuckDBPyConnection) -> int:
    text = resources.files("workflow_scripts.warehouse").joinpath("paper_tables.csv").read_text()
    rows = [{**r, "value": float(r["value"])} for r in csv.DictReader(text.splitlines())]
    return replace_rows(con, "paper_tables", {}, rows)


def flat_config(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            out.update(flat_config(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: data}


def config_diff(resolved: dict) -> dict[str, list]:
    """Keys whose value differs from the run's preset, as {key: [preset value, run value]}."""
    preset = flat_config(load_preset(resolved["preset"]))
    ours = flat_config(resolved)
    return {
        k: [preset.get(k), v]
        for k, v in sorted(ours.items())
        if preset.get(k) != v and not k.startswith("preset")
    }


def _time(seconds: float | None):
    return datetime.fromtimestamp(seconds, tz=UTC).replace(tzinfo=None) if seconds else None


def jobs(con: duckdb.DuckDBPyConnection, run_id: str, journal: Path) -> list[dict]:
    """One row per submitted job, from the launcher's journal (and, on Slurm, its accounting)."""
    by_job: dict[str, dict] = {}
    if journal.exists():
        for line in journal.read_text().splitlines():
            event = json.loads(line)
            job = by_job.setdefault(str(event["job_id"]), {"run_id": run_id, "job_id": str(event["job_id"])})
            if event["event"] == "submitted":
                job.update(
                    name=event.get("name"),
                    launcher=event.get("kind"),
                    nodes=event.get("nodes"),
                    tasks=event.get("tasks"),
                    gpus_per_node=event.get("gpus_per_node"),
                    log_folder=event.get("folder"),
                    submitted=event["time"],
                    state="SUBMITTED",
                )
            else:
                job.update(state=event.get("state"), ended=event["time"])
            for key in (
                "node_list",
                "exit_code",
                "elapsed_seconds",
                "requested_tres",
                "array_index",
                "restarts",
            ):
                if key in event:
                    job[key] = event[key]
    rows = []
    for job in by_job.values():
        started, ended = job.pop("submitted", None), job.pop("ended", None)
        rows.append(
            {
                "run_id": run_id,
                "job_id": job["job_id"],
                "name": job.get("name"),
                "launcher": job.get("launcher"),
                "state": job.get("state"),
                "array_index": job.get("array_index"),
                "nodes": job.get("nodes"),
                "tasks": job.get("tasks"),
                "gpus_per_node": job.get("gpus_per_node") or 0,
                "node_list": job.get("node_list"),
                "exit_code": job.get("exit_code"),
                "submitted_at": _time(started),
                "ended_at": _time(ended),
                # the scheduler's figure when it has one, even 0 (a job under a second): not our wall time
                "elapsed_seconds": job["elapsed_seconds"]
                if job.get("elapsed_seconds") is not None
                else ((ended - started) if started and ended else None),
                "requested_tres": job.get("requested_tres"),
                "log_folder": job.get("log_folder"),
                "restarts": job.get("restarts") or 0,
            }
        )
    replace_rows(con, "jobs", {"run_id": run_id}, rows)
    return rows


def view_hash(resolved: dict, rule: str, rest: str) -> str | None:
    """The hash of the config values a rule reads (its wildcard values are the benchmark file's suffix)."""
    names = view_wildcards(rule)
    if names is None:
        return None
    values = rest.split(".") if rest else []
    return stage_hash(resolved, rule, **dict(zip(names, values, strict=False)))


def stages(con: duckdb.DuckDBPyConnection, run_id: str, run_dir: Path) -> int:
    """Every rule that ran: its config-view hash, wall time and memory (Snakemake's benchmark files),
    and, where the stage wrote provenance, its inputs' fingerprints."""
    resolved = json.loads((run_dir / "config.resolved.json").read_text())
    rows = []
    for tsv in sorted((run_dir / "benchmarks").glob("*.tsv")):
        with open(tsv) as handle:
            bench = next(csv.DictReader(handle, delimiter="\t"))
        rule, _, rest = tsv.stem.partition(".")
        stage = rule if not rest else f"{rule}/{rest.replace('.', '/')}"
        provenance = _provenance(run_dir, rule, rest)
        rows.append(
            {
                "run_id": run_id,
                "stage": stage,
                "rule": rule,
                "stage_hash": view_hash(resolved, rule, rest),
                "inputs": json.dumps(provenance.get("inputs", {})),
                "output": provenance.get("output"),
                "status": "completed",
                "wall_seconds": float(bench["s"]),
                "max_rss_mb": float(bench["max_rss"]),
            }
        )
    return replace_rows(con, "stages", {"run_id": run_id}, rows)


def _provenance(run_dir: Path, rule: str, rest: str) -> dict:
    entry = STAGES.get(rule)
    values = rest.split(".") if rest else []
    name = entry.trained(**dict(zip(entry.wildcards, values, strict=False))) if entry else None
    if name is None:
        return {}
    final = run_dir / "train" / name / "final"
    path = final / "provenance.json"
    return {**json.loads(path.read_text()), "output": str(final)} if path.exists() else {}


def systems(con: duckdb.DuckDBPyConnection, run_id: str, run_dir: Path) -> int:
    """Every system record (ablation variants, external systems, UniToken) with its "protocol" mapping."""
    rows = []
    for path in sorted((run_dir / "variants").glob("*.json")):
        record = json.loads(path.read_text())
        rows.append(
            {
                "run_id": run_id,
                "system": path.stem,
                "protocol": json.dumps(record.get("protocol") or {}),
                "record": json.dumps(record),
            }
        )
    return replace_rows(con, "systems", {"run_id": run_id}, rows)


def run(con: duckdb.DuckDBPyConnection, run_id: str, run_dir: Path) -> dict:
    resolved = json.loads((run_dir / "config.resolved.json").read_text())
    job_rows = jobs(con, run_id, run_dir / "logs" / "jobs.jsonl")
    starts = [r["submitted_at"] for r in job_rows if r["submitted_at"]]
    ends = [r["ended_at"] for r in job_rows if r["ended_at"]]
    elapsed = [r["elapsed_seconds"] or 0.0 for r in job_rows]
    gpu_seconds = sum(
        (r["elapsed_seconds"] or 0.0) * (r["gpus_per_node"] or 0) * (r["nodes"] or 1) for r in job_rows
    )
    provenance = next(
        (json.loads(p.read_text()) for p in sorted(run_dir.glob("train/*/final/provenance.json"))), {}
    )
    row = {
        "run_id": run_id,
        "preset": resolved["preset"],
        "config_hash": digest(resolved),
        "config": json.dumps(resolved),
        "config_diff": json.dumps(config_diff(resolved)),
        "git_commit": provenance.get("git", {}).get("commit"),
        "git_dirty": provenance.get("git", {}).get("dirty"),
        "packages": json.dumps(provenance.get("packages", {})),
        "host": provenance.get("host"),
        "seed": resolved["seed"],
        "started_at": min(starts) if starts else None,
        "finished_at": max(ends) if ends else None,
        "wall_seconds": (max(ends) - min(starts)).total_seconds() if starts and ends else None,
        "job_seconds": float(sum(elapsed)),
        "gpu_hours": gpu_seconds / 3600,
    }
    return {
        "runs": replace_rows(con, "runs", {"run_id": run_id}, [row]),
        "systems": systems(con, run_id, run_dir),
        "jobs": len(job_rows),
        "stages": stages(con, run_id, run_dir),
        "paper_tables": paper(con),
    }
