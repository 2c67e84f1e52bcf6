"""The warehouse connection: one DuckDB file per results root, one writer at a time, versioned schema.

DuckDB allows, per file, either one process that writes or any number of read-only processes; a
second process is refused at once ("Could not set lock on file ... Conflicting lock is held in
<program> (PID n)"). So:

* every write holds an exclusive file lock beside the database for its whole transaction: ingest jobs
  that finish together queue on it instead of failing;
* every open (ours and the report's, read-only for readers) retries with bounded backoff while another
  process (a `duckdb -readonly` shell, a notebook, the report) holds the file, then fails naming that
  process (`connect`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa
from filelock import FileLock

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 2: jobs.restarts; 3: systems, eval_protocols
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
    "eval_protocols",
    "systems",
    "judgements",
    "paper_tables",
)


def _schema_sql() -> str:
    return resources.files("workflow_scripts.warehouse").joinpath("schema.sql").read_text()


# version -> how to get there from the previous one. schema.sql is always the whole current schema: a
# new database gets it at once; every statement in it is idempotent (CREATE ... IF NOT EXISTS, ALTER
# TABLE ... ADD COLUMN IF NOT EXISTS), so re-applying it upgrades an older database
MIGRATIONS: dict[int, Callable[[duckdb.DuckDBPyConnection], None]] = {
    1: lambda con: con.execute(_schema_sql()),
    2: lambda con: con.execute(_schema_sql()),
    3: lambda con: con.execute(_schema_sql()),
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
    if current == 0:  # a new database: schema.sql is the whole current schema
        con.execute(_schema_sql())
        con.execute("INSERT INTO schema_version VALUES (?, now())", [SCHEMA_VERSION])
        return 0
    for version in range(current + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[version](con)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
    return current


@dataclass(frozen=True)
class Backoff:
    """How long to keep retrying a database another process holds: sleeps double from first_s to max_s."""

    timeout_s: float = 120.0  # a user's query or another ingest holds the file for seconds, not minutes
    first_s: float = 0.05
    max_s: float = 2.0


DEFAULT_BACKOFF = Backoff()

_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")


class WarehouseLocked(RuntimeError):
    """Another process kept the DuckDB file locked for longer than the backoff allows."""


def _holder(message: str) -> str:
    """The process DuckDB names in a lock conflict, with its command line when /proc shows it."""
    match = _HOLDER.search(message)
    if not match:
        return "another process"
    pid = match["pid"]
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:  # gone already, another machine (shared file system) or no /proc
        argv = []
    if not argv or not argv[0]:
        return f"PID {pid} ({match['program']})"
    # duckdb-cli's launcher passes a long multi-line -cmd: one line, and the arguments' middle left out
    rest = " ".join(" ".join(arg.split()) for arg in argv[1:] if arg)
    if len(rest) > 160:
        rest = f"{rest[:40]} ... {rest[-110:]}"
    command = f"{argv[0]} {rest}".strip()
    return f"PID {pid} ({command})"


def connect(
    path: str | Path, read_only: bool = False, backoff: Backoff = DEFAULT_BACKOFF
) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retried while another process holds the file; WarehouseLocked after the bound."""
    deadline = time.monotonic() + backoff.timeout_s
    delay = backoff.first_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as err:
            if "Could not set lock" not in str(err):
                raise
            holder = _holder(str(err))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                mode = "read" if read_only else "write"
                raise WarehouseLocked(
                    f"cannot open {path} to {mode}: {holder} has held it for over {backoff.timeout_s:g} s "
                    "(DuckDB allows one writing process or several read-only ones per file). Close that "
                    "process (e.g. a `duckdb` shell on this file) and run again; query the warehouse with "
                    f"`duckdb -readonly {path}` and keep such sessions short while a run ingests."
                ) from err
            if delay == backoff.first_s:
                log.info("%s is held by %s; retrying for up to %g s", path, holder, backoff.timeout_s)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, backoff.max_s)


@contextlib.contextmanager
def writer(
    path: str | Path, timeout: float = 600, backoff: Backoff = DEFAULT_BACKOFF
) -> Iterator[duckdb.DuckDBPyConnection]:
    """An exclusive, transactional connection: everything in the block commits together or not at all.

    ``timeout`` bounds the wait for other ingests (the file lock); ``backoff`` the wait for any other
    process holding the database itself.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout), connect(path, backoff=backoff) as con:
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
def reader(path: str | Path, backoff: Backoff = DEFAULT_BACKOFF) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection. No file lock: readers never block each other, and an ingest in progress
    only makes the open wait (``connect``'s retry) until it commits."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no warehouse at {path}: run `snakemake all` (or the ingest rules) first")
    with connect(path, read_only=True, backoff=backoff) as con:
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
