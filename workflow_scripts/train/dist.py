"""The process-group environment. Model code never touches ranks or devices; this module and the engines
(``train/engines.py``) do.

Inside a submitit job with several tasks, submitit's ``TorchDistributedEnvironment`` exports RANK,
WORLD_SIZE, MASTER_ADDR/PORT and LOCAL_RANK; the engine then initialises torch.distributed from them
(nccl on GPUs, gloo on CPU).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess

log = logging.getLogger(__name__)


def export_submitit_environment() -> None:
    """Set the torch.distributed variables from submitit's job environment (no-op outside a job)."""
    if "RANK" in os.environ or not _in_submitit_job():
        return
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.environ["MASTER_ADDR"] = _address_of(os.environ["MASTER_ADDR"])


def _address_of(node: str) -> str:
    """The first node's address. submitit gives its Slurm node name, which DNS may not know (clusters
    whose node names differ from host names; several slurmd on one host); Slurm knows its NodeAddr."""
    try:
        socket.getaddrinfo(node, None)
        return node
    except OSError:
        pass
    shown = subprocess.run(["scontrol", "show", "node", node], capture_output=True, text=True, check=False)
    found = re.search(r"\bNodeAddr=(\S+)", shown.stdout)
    if not found:
        raise RuntimeError(
            f"cannot resolve the master node {node!r}: not in DNS, and scontrol says: "
            f"{shown.stderr.strip() or shown.stdout.strip()}"
        )
    return found.group(1)


def _in_submitit_job() -> bool:
    try:
        import submitit

        submitit.JobEnvironment()
    except RuntimeError:
        return False
    return True
