"""Stop requests from the scheduler, acted on by the training loop between optimiser steps.

submitit runs a job's ``checkpoint()`` from inside its SIGUSR2 handler, i.e. wherever the main thread
happens to be, and then requeues and exits: the training loop never gets to save, and everything since
the last periodic checkpoint is lost. :func:`install` puts a handler in front of submitit's: while a
training loop runs (:func:`training`), USR2 only records the request; the loop finishes its current step,
writes a checkpoint and then calls submitit's handler (:func:`proceed`), which requeues the job. Outside a
training loop USR2 goes to submitit at once, as before.

SIGTERM (``scontrol requeue``, a node failure, ``scancel``, the end of the time limit) means the job is
going away and, on a requeue, a new run of it may already be starting from the newest checkpoint:
submitit ignores SIGTERM, so the old process used to keep training and could write a checkpoint after
the new one had started. Here SIGTERM marks the process as aborted: the loop and the checkpointer write
nothing more and the process exits (without a result, so the launcher never mistakes it for an end).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


class Stop(enum.IntEnum):
    NONE = 0
    CHECKPOINT = 1  # USR2: finish the step, save a checkpoint, then requeue
    ABORT = 2  # SIGTERM: write nothing more, exit


class TrainingStopped(SystemExit):
    """The loop stopped on a scheduler signal. A SystemExit, so submitit writes no result for the task
    (the job is being requeued or killed, not finished) and the process exits with ``code``."""


_state: dict[str, Any] = {"requested": Stop.NONE, "active": 0, "usr2": None, "term": None}


def install() -> None:
    """Put our handlers in front of the current SIGUSR2/SIGTERM ones (submitit's, inside a job).
    Idempotent; must run in the main thread (as a submitit job's function does)."""
    if _state["usr2"] is not None:
        return
    _state["usr2"] = signal.signal(signal.SIGUSR2, _on_usr2)
    _state["term"] = signal.signal(signal.SIGTERM, _on_term)


def uninstall() -> None:
    """Restore the handlers :func:`install` replaced and clear any request (tests)."""
    if _state["usr2"] is not None:
        signal.signal(signal.SIGUSR2, _state["usr2"])
        signal.signal(signal.SIGTERM, _state["term"])
    _state.update(requested=Stop.NONE, active=0, usr2=None, term=None)


def requested() -> Stop:
    return _state["requested"]


def aborted() -> bool:
    return _state["requested"] == Stop.ABORT


@contextlib.contextmanager
def training() -> Iterator[None]:
    """While inside, USR2 is deferred to the loop's next step boundary."""
    _state["active"] += 1
    try:
        yield
    finally:
        _state["active"] -= 1


def proceed() -> None:
    """Hand the deferred USR2 to the handler it was meant for: submitit's, which calls the job's
    ``checkpoint()``, requeues the job and exits (rank 0; other ranks return)."""
    handler = _state["usr2"]
    if callable(handler):
        handler(signal.SIGUSR2, None)


def abort_now(where: str) -> None:
    """Exit without writing anything more (after SIGTERM)."""
    log.warning("SIGTERM received: stopping %s without writing anything more", where)
    raise TrainingStopped(128 + signal.SIGTERM)


def _on_usr2(signum: int, frame: FrameType | None) -> None:
    if _state["active"]:
        if _state["requested"] == Stop.NONE:
            _state["requested"] = Stop.CHECKPOINT
        # the loop logs when it acts on it; logging here could interleave with a half-written line
        return
    _forward(_state["usr2"], signum, frame)


def _on_term(signum: int, frame: FrameType | None) -> None:
    _state["requested"] = Stop.ABORT
    if not _state["active"]:
        _forward(_state["term"], signum, frame)


def _forward(handler: Callable | int | None, signum: int, frame: FrameType | None) -> None:
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL and signum == signal.SIGTERM:
        raise TrainingStopped(128 + signum)  # what the default action would have done, minus the kill
