"""`snakemake --profile slurm`: the profile's `slurm_jobs` bounds how many stage jobs run at once, not
the login node's cores.

Snakemake always loads the workflow profile (profiles/default) and it wins per key over a --profile;
with `cores: all` there, slurm/config.yaml's `cores` never counted and a cluster run waited on two
Slurm jobs at a time on a 2-core login node. These run the repository's profiles, unchanged, on a
Snakefile whose rules wait for each other like a barrier, and measure how many ran at once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from snakemake.utils import available_cpu_count

REPO = Path(__file__).resolve().parent.parent
BARRIER_S = 5  # a rule waits this long at most for the others to start

SNAKEFILE = """
N = {count}


rule all:
    input:
        expand("done/{{i}}", i=range(N)),


rule stage:
    output:
        "done/{{i}}",
    shell:
        # start time; wait until {jobs} rules have started (or the bound); end time
        "mkdir -p started && date +%s.%N > {{output}} && touch started/{{wildcards.i}} && "
        "for t in $(seq {ticks}); do [ $(ls started | wc -l) -ge {jobs} ] && break; sleep 0.1; done; "
        "date +%s.%N >> {{output}}"
"""


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = most = 0
    for _, change in events:  # at equal times an end (-1) sorts before a start
        running += change
        most = max(most, running)
    return most


def _slurm_jobs() -> int:
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    return int(dict(r.split("=") for r in profile["resources"])["slurm_jobs"])


def _run(workdir: Path, count: int, barrier: int, *args: str) -> subprocess.CompletedProcess:
    """The barrier Snakefile with ``count`` rules, each waiting for ``barrier`` starts, in a checkout's
    layout (the repository's profiles, symlinked)."""
    (workdir / "Snakefile").write_text(SNAKEFILE.format(count=count, jobs=barrier, ticks=BARRIER_S * 10))
    for name in ("profiles", "slurm", "config.yaml"):
        (workdir / name).symlink_to(REPO / name)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args, "all"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "workflow specific profile profiles/default" in result.stderr  # the workflow profile was in force
    return result


def test_profile_slurm_runs_more_stage_jobs_at_once_than_the_machine_has_cores(tmp_path):
    jobs = _slurm_jobs()
    cores = available_cpu_count()
    # one rule more than the profile allows: the last can only start when another has ended
    _run(tmp_path, jobs + 1, jobs, "--profile", "slurm")
    intervals = []
    for done in (tmp_path / "done").iterdir():
        start, end = map(float, done.read_text().split())
        intervals.append((start, end))
    assert len(intervals) == jobs + 1
    most = _most_at_once(intervals)
    assert most == jobs, (
        f"{most} stage jobs ran at once; the profile allows {jobs} (this machine: {cores} cores)"
    )
    if cores < jobs:
        assert most > cores


def test_a_run_without_a_profile_uses_every_local_core(tmp_path):
    result = _run(tmp_path, 1, 1)
    assert f"Provided cores: {available_cpu_count()}" in result.stderr


# `python -m tests.cluster.slurm` with the cluster faked: what the README's "try the profile by hand"
# steps print, and when
_FAKE_CLUSTER = """
import sys
import tests.cluster.slurm as slurm


class FakeCluster:
    def __init__(self, root, accounting=True):
        self.conf, self.bring_up_seconds = f"{root}/etc/slurm.conf", 0.1

    def start(self):
        return self

    def stop(self):
        return 0.0


slurm.LocalSlurm = FakeCluster
sys.exit(slurm.main(["--root", sys.argv[1]]))
"""


def test_the_local_cluster_prints_its_slurm_conf_at_once_into_a_file(tmp_path):
    out = tmp_path / "nohup.out"
    with out.open("w") as sink:  # as `nohup python -m tests.cluster.slurm > file`: stdout is a file
        proc = subprocess.Popen(
            [sys.executable, "-c", _FAKE_CLUSTER, str(tmp_path / "cluster")],
            stdout=sink,
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},  # a user's shell
            # a pytest started in the background inherits an ignored SIGINT: give the child Ctrl-C back
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.monotonic() + 30
        while "export SLURM_CONF=" not in out.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, f"exited early: {out.read_text()}"
            time.sleep(0.1)
        printed = out.read_text()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: stops the (fake) daemons
        proc.wait(timeout=30)
    assert f"export SLURM_CONF={tmp_path / 'cluster' / 'etc' / 'slurm.conf'}" in printed


def test_the_readme_exports_the_slurm_conf_the_cluster_writes(tmp_path):
    from tests.cluster.slurm import LocalSlurm

    cluster = LocalSlurm(tmp_path)
    layout = cluster.conf.relative_to(tmp_path).as_posix()  # etc/slurm.conf
    readme = (REPO / "README.md").read_text()
    exports = [
        line.split("SLURM_CONF=", 1)[1].split()[0] for line in readme.splitlines() if "SLURM_CONF=/" in line
    ]
    assert exports and all(e.endswith("/" + layout) for e in exports), exports


# --- small truths: what the docs say matches what exists --------------------------------------------


def test_max_num_timeout_is_documented_as_counting_timeouts_only():
    """submitit decrements its requeue budget only on a timeout; a preempted job is requeued every time
    (submitit.core.job_environment.SignalHandler.checkpoint_and_try_requeue)."""
    schema = (REPO / "config.schema.json").read_text()
    readme = (REPO / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `max_num_timeout`"))
    assert "preemptions are not counted" in row
    assert (
        "Times a timed-out job is requeued to resume from its checkpoint (preemptions are not counted)."
        in schema
    )


def test_files_the_docs_name_exist():
    for name in ("README.md", "pyproject.toml", "envs/umm.yaml"):
        text = (REPO / name).read_text()
        for path in re.findall(r"\btests/[\w/]+\.(?:py|yaml)\b", text):
            assert (REPO / path).exists(), f"{name} names {path}, which does not exist"
