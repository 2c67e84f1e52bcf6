"""The DuckDB warehouse: schema versioning, idempotent and transactional ingests, one writer at a time."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from workflow_scripts.config.loader import resolve
from workflow_scripts.warehouse import db, ingest


def _stage(root: Path, steps: int = 4) -> Path:
    """A training stage's outputs as the loop writes them: metrics, checkpoints with exports, final."""
    final = root / "train" / "rl_encoder" / "final"
    final.mkdir(parents=True)
    lines = [
        json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-3, "reward_mean": 0.1 * s})
        for s in range(1, steps + 1)
    ]
    (final / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for step in (2, 4):
        folder = final.parent / "checkpoints" / f"step_{step:08d}"
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "weights.bin").write_bytes(bytes([step]) * 16)
        (folder / "checkpoint.json").write_text(json.dumps({"step": step, "identity": "abc"}))
    selection = root / "selection.json"
    selection.write_text(
        json.dumps(
            {
                "metric": "overall",
                "selected_step": 2,
                "selected": "x",
                "candidates": [{"step": 2, "metric": 81.5}, {"step": 4, "metric": 80.0}],
            }
        )
    )
    return final


def _counts(path: Path) -> dict[str, int]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("train_metrics", "checkpoints")
        }


def test_schema_is_versioned_and_applied_once(tmp_path):
    path = tmp_path / "w.duckdb"
    for _ in range(2):
        with db.writer(path) as con:
            pass
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT version FROM schema_version").fetchall() == [(db.SCHEMA_VERSION,)]
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {*db.TABLES, "schema_version"} <= tables


def test_ingest_is_idempotent_and_long_format(tmp_path):
    final = _stage(tmp_path)
    path = tmp_path / "w.duckdb"
    for _ in range(2):
        with db.writer(path) as con:
            counts = ingest.training(con, "run", "rl_encoder", final, tmp_path / "selection.json")
    assert counts == {"train_metrics": 12, "checkpoints": 2}
    assert _counts(path) == {"train_metrics": 12, "checkpoints": 2}
    frame = db.query(path, "SELECT step, value FROM train_metrics WHERE metric = 'reward_mean' ORDER BY step")
    assert frame["value"].round(6).tolist() == [0.1, 0.2, 0.3, 0.4]
    selected = db.query_arrow(
        path, "SELECT step, selected, selection_value FROM checkpoints ORDER BY step"
    ).to_pylist()
    assert selected == [
        {"step": 2, "selected": True, "selection_value": 81.5},
        {"step": 4, "selected": False, "selection_value": 80.0},
    ]


def test_a_crash_mid_ingest_leaves_the_warehouse_as_it_was(tmp_path, monkeypatch):
    final = _stage(tmp_path)
    path = tmp_path / "w.duckdb"
    with db.writer(path) as con:
        ingest.training(con, "run", "rl_encoder", final, None)
    before = _counts(path)
    real = ingest.replace_rows
    calls = []

    def failing(con, table, key, rows):
        calls.append(table)
        if len(calls) == 2:  # the metrics are already replaced when the checkpoints fail
            raise RuntimeError("disk full")
        return real(con, table, key, rows[:1])

    monkeypatch.setattr(ingest, "replace_rows", failing)
    with pytest.raises(RuntimeError, match="disk full"), db.writer(path) as con:
        ingest.training(con, "run", "rl_encoder", final, None)
    assert _counts(path) == before


def _ingest_in_process(args):
    path, run, final = args
    with db.writer(path) as con:
        ingest.training(con, run, "rl_encoder", Path(final), None)
        time.sleep(0.3)  # hold the lock: the other process must wait, not fail
    return run


def test_concurrent_ingests_queue_on_the_write_lock(tmp_path):
    final = _stage(tmp_path)
    path = tmp_path / "w.duckdb"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        done = pool.map(_ingest_in_process, [(str(path), f"run{i}", str(final)) for i in range(3)])
    assert sorted(done) == ["run0", "run1", "run2"]
    frame = db.query(path, "SELECT run_id, count(*) AS n FROM train_metrics GROUP BY run_id ORDER BY run_id")
    assert frame["n"].tolist() == [12, 12, 12]


def test_jobs_from_the_launcher_journal(tmp_path):
    journal = tmp_path / "jobs.jsonl"
    events = [
        {
            "time": 100.0,
            "event": "submitted",
            "job_id": "7",
            "name": "a",
            "kind": "local",
            "nodes": 1,
            "tasks": 2,
            "gpus_per_node": 4,
            "folder": "f",
        },
        {"time": 160.0, "event": "completed", "job_id": "7", "name": "a", "state": "DONE"},
        {
            "time": 110.0,
            "event": "submitted",
            "job_id": "8",
            "name": "b",
            "kind": "local",
            "nodes": 2,
            "tasks": 1,
        },
        {"time": 115.0, "event": "failed", "job_id": "8", "name": "b", "state": "FAILED"},
    ]
    journal.write_text("".join(json.dumps(e) + "\n" for e in events))
    with db.writer(tmp_path / "w.duckdb") as con:
        rows = ingest.jobs(con, "run", journal)
    by_id = {r["job_id"]: r for r in rows}
    assert (
        by_id["7"]["state"] == "DONE"
        and by_id["7"]["elapsed_seconds"] == 60.0
        and by_id["7"]["gpus_per_node"] == 4
    )
    assert by_id["8"]["state"] == "FAILED" and by_id["8"]["elapsed_seconds"] == 5.0


def test_config_diff_lists_what_differs_from_the_preset():
    preset_steps = resolve({})["pretrain"]["encoder"]["loop"]["steps"]
    resolved = resolve({"seed": 7, "pretrain": {"encoder": {"loop": {"steps": 3}}}})
    diff = ingest.config_diff(resolved)
    assert diff["seed"] == [0, 7]
    assert preset_steps != 3 and diff["pretrain.encoder.loop.steps"] == [preset_steps, 3]
    assert "run_name" not in diff and not any(k.startswith("preset") for k in diff)


def test_paper_tables_match_the_reference_file():
    uae = "FROM paper_tables WHERE table_name = 'unified_bench' AND method = 'UAE'"
    with duckdb.connect() as con:
        con.execute(db._schema_sql())
        ingest.paper(con)
        overall = con.execute(f"SELECT value {uae} AND metric = 'overall'").fetchone()[0]
        parts = con.execute(f"SELECT avg(value) {uae} AND metric <> 'overall'").fetchone()[0]
        ablation = con.execute("SELECT count(*) FROM paper_tables WHERE table_name = 'ablation'").fetchone()[
            0
        ]
    assert overall == 86.09 and parts == pytest.approx(86.09, abs=0.01) and ablation == 4


# Another process holding the database, as the README's `duckdb -readonly results/umm.duckdb` or a
# notebook does. DuckDB refuses a second process at once; the warehouse must wait for it, boundedly.
_HOLD_PY = (
    "import duckdb, sys, time; "
    "con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'ro'); "
    "print('holding', flush=True); time.sleep(float(sys.argv[3]))"
)


def _hold(path: Path, seconds: float, *, how: str) -> subprocess.Popen:
    """Start a process holding ``path`` (how: 'cli' = the duckdb shell read-only, 'ro'/'rw' = Python);
    returns once it holds the file."""
    if how == "cli":
        cli = Path(sys.executable).parent / "duckdb"  # duckdb-cli, pinned with the Python package
        proc = subprocess.Popen(
            [str(cli), "-readonly", "-list", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        proc.stdin.write(f"select 'holding';\nselect sleep_ms({int(seconds * 1000)});\n")
        proc.stdin.close()
    else:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD_PY, str(path), how, str(seconds)], stdout=subprocess.PIPE, text=True
        )
    for line in proc.stdout:
        if "holding" in line:
            return proc
    raise AssertionError(f"the holder exited early (rc {proc.wait()})")


def test_an_ingest_waits_for_a_reader_holding_the_warehouse(tmp_path):
    final = _stage(tmp_path)
    path = tmp_path / "w.duckdb"
    with db.writer(path):
        pass
    holder = _hold(path, 2.0, how="cli")
    try:
        start = time.monotonic()
        with db.writer(path) as con:
            counts = ingest.training(con, "run", "rl_encoder", final, None)
        waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    assert counts == {"train_metrics": 12, "checkpoints": 2}
    assert waited > 0.5  # it waited for the reader instead of failing
    assert _counts(path) == {"train_metrics": 12, "checkpoints": 2}


def test_a_holder_past_the_bound_fails_naming_it(tmp_path):
    path = tmp_path / "w.duckdb"
    with db.writer(path):
        pass
    holder = _hold(path, 60, how="ro")
    try:
        start = time.monotonic()
        with pytest.raises(db.WarehouseLocked) as caught, db.writer(path, backoff=db.Backoff(timeout_s=1.0)):
            pass
        waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    message = str(caught.value)
    assert f"PID {holder.pid} ({sys.executable} -c import duckdb" in message  # who holds it: its command line
    assert str(path) in message and "duckdb -readonly" in message
    assert 1.0 <= waited < 5.0


def test_the_report_reader_waits_for_an_ingest(tmp_path):
    final = _stage(tmp_path)
    path = tmp_path / "w.duckdb"
    with db.writer(path) as con:
        ingest.training(con, "run", "rl_encoder", final, None)
    holder = _hold(path, 2.0, how="rw")  # e.g. an ingest of another stage, mid-transaction
    try:
        frame = db.query(path, "SELECT count(*) AS n FROM train_metrics")
    finally:
        holder.kill()
        holder.wait()
    assert frame["n"].tolist() == [12]
