"""A real Slurm cluster on this machine, for the tests (and for users: `python -m tests.cluster.slurm`).

Debian's slurm-wlm 22.05 + munge + slurmdbd + MariaDB, every daemon started by hand (no systemd) with
its state, logs, PID files and sockets under one folder, bound to loopback, and stopped by PID:

* two compute nodes on one host (Debian's build has MULTIPLE_SLURMD): ``slurmd -N n1`` / ``-N n2``,
  each with its own port and spool dir; jobs tell nodes apart by ``$SLURMD_NODENAME``;
* 8 fake GPUs per node: a gres.conf with ``AutoDetect=off`` and files that link to /dev/null;
* accounting (MariaDB + slurmdbd), which submitit needs to see a job that died without a result;
* ``cred_expire=10`` and fast scheduler intervals, so a requeued job restarts after ~11 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED = (
    "slurmctld",
    "slurmd",
    "slurmdbd",
    "munged",
    "mariadbd",
    "mariadb-install-db",
    "sacctmgr",
    "sinfo",
)
APT = "apt-get install slurm-wlm slurmdbd munge mariadb-server"


def missing_tools() -> list[str]:
    return [t for t in REQUIRED if shutil.which(t) is None]


def _free_ports(count: int) -> list[int]:
    """``count`` consecutive free TCP ports on loopback (slurmd ports of n1..nK must be a range)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            start = probe.getsockname()[1]
        if start + count > 65000:
            continue
        sockets = []
        try:
            for port in range(start, start + count):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return list(range(start, start + count))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free port range")


@dataclass
class LocalSlurm:
    root: Path
    accounting: bool = True
    nodes: int = 2
    cpus: int = 2
    gpus: int = 8
    cluster: str = "umm"
    min_job_age: int = 600  # seconds the controller remembers a finished job
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        ports = _free_ports(4 + self.nodes)
        self.mysql_port, self.dbd_port, self.ctld_port, _ = ports[:4]
        self.node_ports = ports[4:]
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, sacct, submitit, snakemake) needs to talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _spawn(self, name: str, command: list[str], **kwargs) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - lives as long as the daemon
        self.processes[name] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True, **kwargs
        )

    def _wait(self, what: str, check, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if check():
                return
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(
                    f"{', '.join(dead)} exited while waiting for {what}; logs in {self.root / 'log'}"
                )
            time.sleep(0.2)
        raise TimeoutError(f"timed out waiting for {what}; logs in {self.root / 'log'}")

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    # --- bring-up ------------------------------------------------------------------------------
    def start(self) -> LocalSlurm:
        absent = missing_tools()
        if absent:
            raise RuntimeError(f"Slurm test cluster needs {', '.join(absent)}: {APT}")
        for sub in ("etc", "log", "run", "state", "dev", "munge", "mysql"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o755)
        os.chmod(self.root, 0o755)
        began = time.time()
        self._start_munge()
        if self.accounting:
            self._start_mariadb()
            self._start_slurmdbd()
        self._write_slurm_conf()
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        for i in range(1, self.nodes + 1):
            (self.root / "state" / f"n{i}").mkdir(exist_ok=True)
            self._spawn(f"slurmd-n{i}", ["slurmd", "-D", "-N", f"n{i}", "-f", str(self.conf)])
        self._wait("idle nodes", lambda: self.idle_nodes() == self.nodes)
        self.bring_up_seconds = time.time() - began
        return self

    def idle_nodes(self) -> int:
        result = self._run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
        return sum(1 for line in result.stdout.splitlines() if line.split()[-1] in ("idle", "mix", "alloc"))

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self._spawn(
            "munged",
            [
                "munged",
                "-F",
                "-f",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.root / 'run' / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'seed'}",
            ],
        )
        self._wait("munge socket", self.munge_socket.exists)

    def _start_mariadb(self) -> None:
        data = self.root / "mysql"
        subprocess.run(
            [
                "mariadb-install-db",
                f"--datadir={data}",
                "--user=root",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            capture_output=True,
            check=True,
            timeout=120,
        )
        self.mysql_socket = self.root / "run" / "mysql.sock"
        self._spawn(
            "mariadbd",
            [
                "mariadbd",
                f"--datadir={data}",
                "--user=root",
                f"--socket={self.mysql_socket}",
                f"--port={self.mysql_port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={self.root / 'run' / 'mariadbd.pid'}",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=64M",
            ],
        )
        self._wait("mariadb", self.mysql_socket.exists)
        sql = (
            "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';"
            "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';"
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
        )
        subprocess.run(
            ["mariadb", f"--socket={self.mysql_socket}", "-u", "root", "-e", sql], check=True, timeout=60
        )

    def _start_slurmdbd(self) -> None:
        conf = self.root / "etc" / "slurmdbd.conf"
        conf.write_text(
            "\n".join(
                [
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={self.munge_socket}",
                    "DbdHost=localhost",
                    "DbdAddr=127.0.0.1",
                    f"DbdPort={self.dbd_port}",
                    "SlurmUser=root",
                    "StorageType=accounting_storage/mysql",
                    "StorageHost=127.0.0.1",
                    f"StoragePort={self.mysql_port}",
                    "StorageUser=slurm",
                    "StoragePass=slurm",
                    "StorageLoc=slurm_acct_db",
                    f"PidFile={self.root / 'run' / 'slurmdbd.pid'}",
                    f"LogFile={self.root / 'log' / 'slurmdbd.log'}",
                    "",
                ]
            )
        )
        os.chmod(conf, 0o600)
        self._write_slurm_conf()  # slurmdbd reads slurmdbd.conf beside $SLURM_CONF
        self._spawn("slurmdbd", ["slurmdbd", "-D"])
        self._wait(
            "slurmdbd", lambda: self._run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0
        )
        self._run("sacctmgr", "-i", "add", "cluster", self.cluster, check=False)

    def _write_slurm_conf(self) -> None:
        devices = self.root / "dev"
        for i in range(self.gpus):
            link = devices / f"nvidia{i}"
            if not link.exists():
                link.symlink_to("/dev/null")
        (self.root / "etc" / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName=n[1-{self.nodes}] Name=gpu File={devices}/nvidia[0-{self.gpus - 1}]\n"
        )
        ports = f"{self.node_ports[0]}-{self.node_ports[-1]}"
        accounting = (
            [
                "AccountingStorageType=accounting_storage/slurmdbd",
                "AccountingStorageHost=localhost",
                f"AccountingStoragePort={self.dbd_port}",
                f"AccountingStoragePass={self.munge_socket}",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageTRES=gres/gpu",  # so sacct's ReqTRES lists the GPUs asked for
            ]
            if self.accounting
            else ["AccountingStorageType=accounting_storage/none"]
        )
        self.conf.write_text(
            "\n".join(
                [
                    f"ClusterName={self.cluster}",
                    "SlurmctldHost=localhost(127.0.0.1)",
                    f"SlurmctldPort={self.ctld_port}",
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={self.munge_socket},cred_expire=10",
                    "CredType=cred/munge",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "MpiDefault=none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "GresTypes=gpu",
                    "ReturnToService=2",
                    "SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2",
                    f"MinJobAge={self.min_job_age}",
                    "KillWait=2",
                    "InactiveLimit=0",
                    "JobRequeue=1",
                    f"StateSaveLocation={self.root / 'state' / 'ctld'}",
                    f"SlurmdSpoolDir={self.root / 'state' / '%n'}",
                    f"SlurmctldPidFile={self.root / 'run' / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'run' / 'slurmd.%n.pid'}",
                    f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.root / 'log' / 'slurmd.%n.log'}",
                    *accounting,
                    f"NodeName=n[1-{self.nodes}] NodeHostname=localhost NodeAddr=127.0.0.1 Port={ports} "
                    f"CPUs={self.cpus} RealMemory=20000 Gres=gpu:{self.gpus} State=UNKNOWN",
                    f"PartitionName=debug Nodes=n[1-{self.nodes}] Default=YES MaxTime=INFINITE State=UP "
                    "OverSubscribe=NO",
                    "",
                ]
            )
        )
        (self.root / "state" / "ctld").mkdir(parents=True, exist_ok=True)

    # --- tear-down -----------------------------------------------------------------------------
    def stop(self) -> float:
        began = time.time()
        with contextlib.suppress(Exception):
            self._run("scancel", "--user=root", check=False)
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self.processes.clear()
        return time.time() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", default=None, help="folder for the cluster's state (default: a new temp dir)"
    )
    parser.add_argument("--no-accounting", action="store_true")
    args = parser.parse_args(argv)
    root = Path(args.root or tempfile.mkdtemp(prefix="umm-slurm-"))
    cluster = LocalSlurm(root, accounting=not args.no_accounting).start()
    print(
        f"Slurm is up in {cluster.bring_up_seconds:.1f} s. In another shell:\n"
        f"  export SLURM_CONF={cluster.conf}\n"
        "  sinfo; snakemake --profile slurm all\nCtrl-C stops every daemon.",
        flush=True,  # under `nohup ... > file` stdout is block-buffered: the line must show before exit
    )
    with contextlib.suppress(KeyboardInterrupt):
        signal.pause()
    print(f"stopped in {cluster.stop():.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
