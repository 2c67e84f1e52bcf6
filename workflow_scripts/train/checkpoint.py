"""Resumable checkpoints: accelerate's full training state, written atomically, tied to a run identity.

Layout under the stage's checkpoint folder::

    step_00000040/   accelerate.save_state output (model, optimizer, RNG of every rank, registered
                     objects such as the LR schedule) + checkpoint.json (step, identity)
        model/       the model as HF/safetensors directories (the stage's export, adapters unmerged),
                     loadable with from_pretrained like the stage's final output
    stale-<time>/    checkpoints of an earlier identity (config or inputs changed), moved aside

A checkpoint is first written as ``.tmp-step_*`` and renamed when every rank has finished; a kill
at any moment leaves either the previous checkpoints or the new one, never a half-written one.
After SIGTERM (``train/stop.py``) nothing more is saved: the job is being killed or requeued.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from workflow_scripts.train import stop
from workflow_scripts.train.config import CheckpointConfig

log = logging.getLogger(__name__)

META = "checkpoint.json"


class Checkpointer:
    def __init__(
        self,
        folder: str | os.PathLike,
        accelerator,
        identity: str,
        cfg: CheckpointConfig,
        export: Callable[[Path], None] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.export = export
        self.accelerator = accelerator
        self.identity = identity
        self.cfg = cfg
        self.last_saved: int | None = None

    def _complete(self) -> list[tuple[int, Path]]:
        if not self.folder.exists():
            return []
        found = []
        for path in self.folder.glob("step_*"):
            meta = path / META
            if path.is_dir() and meta.exists():
                found.append((json.loads(meta.read_text())["step"], path))
        return sorted(found)

    def latest(self) -> tuple[int, Path] | None:
        found = self._complete()
        return found[-1] if found else None

    def resume(self) -> int:
        """Load the newest checkpoint of this identity; return its step (0 when starting fresh)."""
        acc = self.accelerator
        if acc.is_main_process:
            self._set_aside_foreign()
        acc.wait_for_everyone()
        latest = self.latest()
        if latest is None:
            return 0
        step, path = latest
        acc.load_state(str(path))
        self.last_saved = step
        if acc.is_main_process:
            log.info("resumed from %s (step %d)", path, step)
        return step

    def _set_aside_foreign(self) -> None:
        leftovers = list(self.folder.glob(".tmp-step_*")) if self.folder.exists() else []
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        foreign = [
            p for _, p in self._complete() if json.loads((p / META).read_text())["identity"] != self.identity
        ]
        if not foreign:
            return
        stale = self.folder / f"stale-{time.strftime('%Y%m%d-%H%M%S')}"
        stale.mkdir(parents=True)
        for path in foreign:
            os.replace(path, stale / path.name)
        log.warning(
            "checkpoints in %s came from another config or other inputs; moved them to %s and starting fresh",
            self.folder,
            stale,
        )

    def maybe_save(self, step: int, *, final: bool) -> None:
        if final or step % self.cfg.every_steps == 0:
            self.save(step)

    def save(self, step: int) -> Path:
        acc = self.accelerator
        if stop.aborted():
            stop.abort_now(f"checkpoint step {step}")
        target = self.folder / f"step_{step:08d}"
        tmp = self.folder / f".tmp-step_{step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            if self.export is not None:
                self.export(tmp / "model")
            (tmp / META).write_text(
                json.dumps({"step": step, "identity": self.identity, "time": time.time()})
            )
            if stop.aborted():  # SIGTERM while saving: a requeued run may already be reading the folder
                shutil.rmtree(tmp, ignore_errors=True)
                stop.abort_now(f"checkpoint step {step}")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            self._prune()
        acc.wait_for_everyone()
        self.last_saved = step
        return target

    def _prune(self) -> None:
        for _, path in self._complete()[: -self.cfg.keep_last]:
            shutil.rmtree(path, ignore_errors=True)
