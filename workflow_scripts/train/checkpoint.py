"""Resumable checkpoints: the engine's full training state, written atomically, tied to a run identity.

Layout under the stage's checkpoint folder::

    step_00000040/   the engine's save_state output (train/engines.py: accelerate's save_state for ddp,
                     sharded torch.distributed.checkpoint files for fsdp, DeepSpeed's checkpoint for
                     deepspeed; always the LR schedule and the RNG of every rank) + checkpoint.json
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
        engine,
        identity: str,
        cfg: CheckpointConfig,
        export: Callable[[Path], None] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.export = export
        self.engine = engine
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
        engine = self.engine
        if engine.is_main_process:
            self._set_aside_foreign()
        engine.wait_for_everyone()
        latest = self.latest()
        if latest is None:
            return 0
        step, path = latest
        engine.load_state(str(path))
        self.last_saved = step
        if engine.is_main_process:
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
        engine = self.engine
        if stop.aborted():
            stop.abort_now(f"checkpoint step {step}")
        target = self.folder / f"step_{step:08d}"
        tmp = self.folder / f".tmp-step_{step:08d}"
        if engine.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        engine.wait_for_everyone()
        engine.save_state(str(tmp))
        engine.wait_for_everyone()
        if self.export is not None:  # collective (sharded engines gather the weights); rank 0 writes
            self.export(tmp / "model")
        if engine.is_main_process:
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
        engine.wait_for_everyone()
        self.last_saved = step
        return target

    def _prune(self) -> None:
        for _, path in self._complete()[: -self.cfg.keep_last]:
            shutil.rmtree(path, ignore_errors=True)
