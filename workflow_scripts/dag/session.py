"""How the Snakemake process itself reacts when the user's login session ends."""

from __future__ import annotations

import signal
import threading


def release_lock_on_hangup() -> None:
    """Treat SIGHUP (a dropped ssh session) like Ctrl-C.

    By default a hangup kills Snakemake on the spot and leaves its directory lock behind, so the same
    command could not simply be typed again. Ctrl-C makes Snakemake stop its local rule processes and
    release the lock; Slurm jobs keep running, and the launcher of the next invocation re-attaches to them.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, signal.default_int_handler)
