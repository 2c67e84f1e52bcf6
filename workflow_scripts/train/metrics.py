"""Per-step training metrics, one JSON object per line; later loaded into DuckDB."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from workflow_scripts import atomic


class MetricsLog:
    """Appends metric lines; on resume from step s it first drops lines of steps after s, so a killed and
    resumed run leaves the same log as an uninterrupted one."""

    def __init__(self, path: str | os.PathLike, *, enabled: bool, resume_step: int) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        kept = [row for row in read(self.path) if row["step"] <= resume_step] if self.path.exists() else []
        atomic.write_text(self.path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in kept))
        self._handle = open(self.path, "a")  # noqa: SIM115 - kept open for the whole run

    def log(self, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        self._handle.write(json.dumps(row, sort_keys=True) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self.enabled:
            self._handle.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read(path: str | os.PathLike) -> list[dict[str, Any]]:
    rows = []
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a kill: everything after it is lost anyway
    return rows
