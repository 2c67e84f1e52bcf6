"""Every number the report shows, as SQL over the warehouse (nothing is computed outside a query)."""

from __future__ import annotations

import json
from typing import Any

import duckdb


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def one(con, sql: str, params: list | None = None) -> dict[str, Any] | None:
    found = rows(con, sql, params)
    return found[0] if found else None


def run_summary(con, run: str) -> dict[str, Any]:
    summary = one(con, "SELECT * FROM runs WHERE run_id = ?", [run])
    if summary is None:
        raise LookupError(f"run '{run}' is not in the warehouse")
    for key in ("config", "config_diff", "packages"):
        summary[key] = json.loads(summary[key]) if summary[key] else {}
    return summary


def jobs(con, run: str) -> list[dict]:
    return rows(
        con,
        """SELECT job_id, array_index, name, launcher, state, nodes, tasks, gpus_per_node, node_list,
                               exit_code, round(elapsed_seconds, 1) AS elapsed_seconds, requested_tres
                        FROM jobs WHERE run_id = ? ORDER BY submitted_at, job_id""",
        [run],
    )


def stages(con, run: str) -> list[dict]:
    return rows(
        con,
        """SELECT stage, round(wall_seconds, 1) AS wall_seconds, round(max_rss_mb) AS max_rss_mb, stage_hash
                        FROM stages WHERE run_id = ? ORDER BY stage""",
        [run],
    )


def data_counts(con, run: str) -> list[dict]:
    return rows(
        con,
        """SELECT verdict, coalesce(split, split_part(reason, ':', 1)) AS outcome, count(*) AS images
                        FROM data_images WHERE run_id = ? GROUP BY ALL ORDER BY verdict, images DESC""",
        [run],
    )


def caption_words(con, run: str) -> list[int]:
    return [
        r["caption_words"]
        for r in rows(
            con,
            """SELECT caption_words FROM data_images
        WHERE run_id = ? AND verdict = 'kept' ORDER BY image_id""",
            [run],
        )
    ]


def curve(con, run: str, stage: str, metric: str) -> list[tuple[int, float]]:
    return [
        (r["step"], r["value"])
        for r in rows(
            con,
            """SELECT step, value FROM train_metrics
        WHERE run_id = ? AND stage = ? AND metric = ? ORDER BY step""",
            [run, stage, metric],
        )
    ]


def final_metrics(con, run: str, stage: str, prefix: str) -> dict[str, float]:
    """A stage's metrics named ``prefix*`` at its last logged step (e.g. an autoencoder's val_psnr_db)."""
    found = rows(
        con,
        """SELECT metric, value FROM train_metrics WHERE run_id = ? AND stage = ? AND starts_with(metric, ?)
        AND step = (SELECT max(step) FROM train_metrics WHERE run_id = ? AND stage = ?)""",
        [run, stage, prefix, run, stage],
    )
    return {r["metric"]: r["value"] for r in found}


def training_stages(con, run: str) -> list[str]:
    return [
        r["stage"]
        for r in rows(con, "SELECT DISTINCT stage FROM train_metrics WHERE run_id = ? ORDER BY stage", [run])
    ]


def score(con, run: str, system: str, bench: str, metric: str) -> float | None:
    found = one(
        con,
        """SELECT value FROM eval_scores WHERE run_id = ? AND system = ? AND benchmark = ? AND metric = ?""",
        [run, system, bench, metric],
    )
    return found["value"] if found else None


def metrics(con, run: str, bench: str, systems: list[str]) -> list[str]:
    """Every metric any of ``systems`` has on ``bench``, overall first."""
    found = rows(
        con,
        """SELECT DISTINCT metric FROM eval_scores
           WHERE run_id = ? AND benchmark = ? AND list_contains(?, system)""",
        [run, bench, systems],
    )
    return sorted((r["metric"] for r in found), key=lambda m: (m != "overall", m))


def systems(con, run: str) -> list[str]:
    return [
        r["system"]
        for r in rows(con, "SELECT DISTINCT system FROM eval_scores WHERE run_id = ? ORDER BY system", [run])
    ]


def paper(con, table: str) -> list[dict]:
    return rows(
        con,
        "SELECT method, metric, value FROM paper_tables WHERE table_name = ? ORDER BY method, metric",
        [table],
    )


def samples(con, run: str, system: str, bench: str, where: str = "TRUE", limit: int = 8) -> list[dict]:
    found = rows(
        con,
        f"""SELECT sample_key, record FROM eval_samples WHERE run_id = ? AND system = ? AND benchmark = ?
                          AND {where} ORDER BY sample_key LIMIT {int(limit)}""",
        [run, system, bench],
    )
    return [json.loads(r["record"]) | {"sample_key": r["sample_key"]} for r in found]


def samples_of(con, run: str, system: str, bench: str, item_ids: list[str]) -> list[dict]:
    """A system's per-sample records of the given items (the gallery's "after" column)."""
    found = rows(
        con,
        """SELECT sample_key, record FROM eval_samples WHERE run_id = ? AND system = ? AND benchmark = ?
           AND list_contains(?, item_id) ORDER BY sample_key""",
        [run, system, bench, item_ids],
    )
    return [json.loads(r["record"]) | {"sample_key": r["sample_key"]} for r in found]


def selections(con, run: str) -> list[dict]:
    return rows(
        con,
        """SELECT stage, step, selection_metric AS metric, round(selection_value, 3) AS value, selected
           FROM checkpoints WHERE run_id = ? AND selection_metric IS NOT NULL ORDER BY stage, step""",
        [run],
    )


def judgements(con, run: str) -> list[dict]:
    return rows(
        con,
        """SELECT system, baseline, judge, round(win, 1) AS win, round(tie, 1) AS tie, round(loss, 1) AS loss,
           items AS n_items FROM judgements WHERE run_id = ? ORDER BY system, baseline, judge""",
        [run],
    )


def runs(con) -> list[dict]:
    return rows(
        con,
        """SELECT run_id, preset, config_hash, git_commit, started_at, round(wall_seconds, 1) AS wall_seconds,
                               round(gpu_hours, 3) AS gpu_hours FROM runs ORDER BY run_id""",
    )


def overall_scores(con, run: str) -> list[dict]:
    return rows(
        con,
        """SELECT system, benchmark, value FROM eval_scores WHERE run_id = ? AND metric = 'overall'
                        ORDER BY system, benchmark""",
        [run],
    )


def system_protocols(con, run: str) -> dict[str, dict]:
    """system -> its record's "protocol" mapping (reader, coldstart, conditioning)."""
    found = rows(con, "SELECT system, protocol FROM systems WHERE run_id = ? ORDER BY system", [run])
    return {r["system"]: json.loads(r["protocol"]) if r["protocol"] else {} for r in found}


def score_protocols(con, run: str) -> dict[tuple[str, str], dict]:
    """(system, benchmark) -> its score record's "protocol" (benchmark_protocol, detector, judge,
    deviations)."""
    found = rows(
        con,
        "SELECT system, benchmark, protocol FROM eval_protocols WHERE run_id = ? ORDER BY system, benchmark",
        [run],
    )
    return {(r["system"], r["benchmark"]): json.loads(r["protocol"]) if r["protocol"] else {} for r in found}
