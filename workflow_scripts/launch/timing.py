"""Marks of a job's phases, for ``bench/bench_job_overhead.py``.

With ``UMM_JOB_TIMING`` naming a file, the launcher and the job's task append one JSON line per phase
boundary (event, wall time, pid, extra fields); without it nothing is written. Kept to the standard
library: the launcher and every task import it before anything else.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

ENV = "UMM_JOB_TIMING"
# set by the bench only: a job imports its stage's entry function but does not call it (nor does the
# launcher run the stage's gather step); in its place it imports the modules UMM_BENCH_IMPORTS names
# (comma-separated: what the entry would import when it runs), so the job's heap and exit are those of
# a stage that loaded its model stack, and the rest of its wall time is its fixed cost
SKIP_ENTRY_ENV = "UMM_BENCH_SKIP_ENTRY"
IMPORTS_ENV = "UMM_BENCH_IMPORTS"


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def skip_entry() -> bool:
    return os.environ.get(SKIP_ENTRY_ENV) == "1"


def mark(event: str, **fields: Any) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"event": event, "time": time.time(), "pid": os.getpid(), **fields}, default=str)
    # one O_APPEND write per line: the launcher and its task append to the same file without a lock
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def stand_in_entry() -> None:
    """What a job runs instead of its entry when the bench skips it: the entry's imports."""
    import importlib

    for name in filter(None, os.environ.get(IMPORTS_ENV, "").split(",")):
        importlib.import_module(name)
