"""The warehouse connection: one DuckDB file per results root, one writer at a time, versioned schema.

DuckDB allows one writing process per file. Every write holds an exclusive file lock beside the
database for its whole transaction, so ingest jobs that finish together queue instead of failing, and
readers (the report, users' queries) open read-only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa
from filelock import FileLock

SCHEMA_VERSION = 1
# every table a complete run fills (schema.sql defines them)
TABLES = (
    "runs",
    "stages",
    "jobs",
    "checkpoints",
    "train_metrics",
    "data_images",
    "eval_samples",
    "eval_scores",
    "judgements",
    "paper_tables",
)


def _schema_sql() -> str:
    return resources.files("workflow_scripts.warehouse").joinpath("schema.sql").read_text()


# version -> how to get there from the previous one; version 1 is the whole schema
MIGRATIONS: dict[int, Callable[[duckdb.DuckDBPyConnection], None]] = {
    1: lambda con: con.execute(_schema_sql())
}


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the schema to SCHEMA_VERSION; returns the version it was at."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)"
    )
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise RuntimeError(
            f"the warehouse has schema version {current}; this code knows up to {SCHEMA_VERSION}"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[version](con)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
    return current


@contextlib.contextmanager
def writer(path: str | Path, timeout: float = 600) -> Iterator[duckdb.DuckDBPyConnection]:
    """An exclusive, transactional connection: everything in the block commits together or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout), duckdb.connect(str(path)) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            migrate(con)
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("CHECKPOINT")


@contextlib.contextmanager
def reader(path: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no warehouse at {path}: run `snakemake all` (or the ingest rules) first")
    with FileLock(str(path) + ".lock", timeout=600), duckdb.connect(str(path), read_only=True) as con:
        yield con


def replace_rows(con: duckdb.DuckDBPyConnection, table: str, key: dict, rows: list[dict]) -> int:
    """Delete the slice ``key`` of ``table``, insert ``rows`` (inside the caller's transaction)."""
    where = " AND ".join(f"{k} = ?" for k in key) or "TRUE"
    con.execute(f"DELETE FROM {table} WHERE {where}", list(key.values()))
    if not rows:
        return 0
    columns = ", ".join(rows[0])
    con.register("incoming_rows", pa.Table.from_pylist(rows))
    try:
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming_rows")
    finally:
        con.unregister("incoming_rows")
    return len(rows)


def query(path: str | Path, sql: str, params: list | None = None):
    """A query's result as a pandas DataFrame."""
    with reader(path) as con:
        return con.execute(sql, params or []).df()


def query_arrow(path: str | Path, sql: str, params: list | None = None):
    """A query's result as a pyarrow Table."""
    with reader(path) as con:
        return con.execute(sql, params or []).to_arrow_table()
