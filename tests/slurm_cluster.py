"""A real single-node Slurm cluster for tests: install, configure, start, wait, stop.

Tests marked ``slurm`` use the session fixture :func:`slurm_cluster` (register it in
``tests/conftest.py`` with ``pytest_plugins = ["tests.slurm_cluster"]``). It:

1. installs Debian's ``slurm-wlm`` and ``munge`` with apt-get when any daemon or client is missing
   (a no-op, and fast, once they are installed);
2. writes a minimal ``slurm.conf`` into a temporary directory, with the node's CPUs and memory taken
   from ``slurmd -C`` and free TCP ports, so two test sessions on one machine do not collide;
3. starts a private ``munged`` (own key and socket), ``slurmctld`` and ``slurmd``, and waits until
   the node is ``idle``;
4. on teardown, even after failures, cancels this cluster's jobs and stops the three daemons by
   the PIDs they wrote.

Everything the cluster owns (config, state, spool, logs, munge socket) lives under one directory.
Clients reach it through :attr:`SlurmCluster.env` (``SLURM_CONF`` and ``PATH``); jobs inherit that
environment from ``sbatch``, so they find the same cluster and the project's ``.venv`` python.

Accounting is off (slurmdbd needs a MariaDB server). submitit learns job states only from
``sacct``; without it a cancelled job would stay "UNKNOWN" and the launcher would wait forever.
So the cluster puts a small ``sacct`` first on ``PATH`` that answers submitit's one query
(``sacct -o JobID,State,NodeList --parsable2 -j ID ...``) from slurmctld's live job records
(``scontrol show job``), which ``MinJobAge`` keeps for an hour. Real clusters run slurmdbd and
give the same answers.

Needs root (Slurm runs as ``SlurmUser=root`` here, and apt-get installs). Tested with Slurm 22.05
on Debian 12 under gVisor, 2 cores.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

APT_PACKAGES = ("slurm-wlm", "munge")
# Every program the cluster or the tests call; any one missing means "install".
REQUIRED_PROGRAMS = (
    "munged",
    "mungekey",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "squeue",
    "scancel",
    "scontrol",
    "sinfo",
)
PARTITION = "debug"
DAEMONS = ("slurmd", "slurmctld", "munged")  # stop order: node first, controller, then auth
START_TIMEOUT_S = 60.0
APT_TIMEOUT_S = 900.0


class SlurmClusterError(RuntimeError):
    """The cluster could not be installed, started or stopped; the message says which step and why."""


# ----------------------------------------------------------------------------------------------
# installation


def missing_programs() -> list[str]:
    return [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None]


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt-get unless every program is already on PATH.

    Runs ``apt-get update`` first (a fresh CI image has empty package lists). Waits for the dpkg
    lock rather than failing, since other engineers may be installing packages at the same time.
    """
    missing = missing_programs()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmClusterError(
            f"Slurm programs missing ({', '.join(missing)}) and not root, so apt-get cannot install "
            f"{' '.join(APT_PACKAGES)}; run the tests as root or deselect them with -m 'not slurm'"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock_wait = ["-o", "DPkg::Lock::Timeout=600"]
    steps = [
        ["apt-get", *lock_wait, "update", "-qq"],
        ["apt-get", *lock_wait, "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
        if proc.returncode != 0:
            raise SlurmClusterError(
                f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{_tail(proc.stdout + proc.stderr)}"
            )
    still_missing = missing_programs()
    if still_missing:
        raise SlurmClusterError(
            f"installed {' '.join(APT_PACKAGES)} but still missing: {', '.join(still_missing)}"
        )


# ----------------------------------------------------------------------------------------------
# configuration


def node_hardware() -> dict[str, str]:
    """The node line of ``slurmd -C`` as a dict, e.g. {"NodeName": "vm", "CPUs": "2", "RealMemory": "24105"}.

    Declaring exactly what slurmd detects matters: a node configured with more CPUs or memory
    than it has is set to INVALID/DRAIN and never runs a job.
    """
    proc = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("NodeName=")), None)
    if proc.returncode != 0 or line is None:
        raise SlurmClusterError(
            f"`slurmd -C` gave no node line (exit {proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}"
        )
    hw = dict(item.split("=", 1) for item in line.split())
    for key in ("NodeName", "CPUs", "RealMemory"):
        if key not in hw:
            raise SlurmClusterError(f"`slurmd -C` line lacks {key}: {line!r}")
    return hw


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on right now (held open together so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def render_slurm_conf(root: Path, hw: dict[str, str], ctld_port: int, slurmd_port: int) -> str:
    """The whole slurm.conf text for a one-node cluster whose files all live under ``root``."""
    node = hw["NodeName"]
    # Keep the node line to what slurmd -C reported; Boards/Sockets/Cores must multiply to CPUs.
    topo_keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    topo = " ".join(f"{k}={hw[k]}" for k in topo_keys if k in hw)
    return textwrap.dedent(
        f"""\
        # Written by tests/slurm_cluster.py: a throwaway single-node cluster under {root}
        ClusterName=drs-test
        SlurmctldHost={node}(127.0.0.1)
        SlurmctldPort={ctld_port}
        SlurmdPort={slurmd_port}
        SlurmUser=root
        SlurmdUser=root
        AuthType=auth/munge
        CredType=cred/munge
        AuthInfo=socket={root / "munge" / "munge.socket"}
        StateSaveLocation={root / "state"}
        SlurmdSpoolDir={root / "spool"}
        SlurmctldPidFile={root / "run" / "slurmctld.pid"}
        SlurmdPidFile={root / "run" / "slurmd.pid"}
        SlurmctldLogFile={root / "log" / "slurmctld.log"}
        SlurmdLogFile={root / "log" / "slurmd.log"}
        # No cgroups in containers/gVisor: track processes by parent pid, bind nothing.
        ProctrackType=proctrack/linuxproc
        TaskPlugin=task/none
        JobAcctGatherType=jobacct_gather/none
        AccountingStorageType=accounting_storage/none
        JobCompType=jobcomp/none
        MpiDefault=none
        SwitchType=switch/none
        SelectType=select/cons_tres
        SelectTypeParameters=CR_Core
        SchedulerType=sched/backfill
        # A node that restarts comes back by itself instead of staying DOWN.
        ReturnToService=2
        # Seconds between SIGTERM and SIGKILL on scancel/timeout (default 30): tests stay fast.
        KillWait=2
        # Finished jobs stay queryable by scontrol (the sacct stand-in reads them) for an hour.
        MinJobAge=3600
        InactiveLimit=0
        SlurmdTimeout=60
        SlurmctldTimeout=60
        SlurmctldDebug=info
        SlurmdDebug=info
        # No mail on this throwaway cluster (silences "MailProg is invalid").
        MailProg=/bin/true
        NodeName={node} NodeAddr=127.0.0.1 {topo} State=UNKNOWN
        PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
        """
    )


# Answers submitit's `sacct -o JobID,State,NodeList --parsable2 -j ID [-j ID ...]` from
# `scontrol show job -o`, formatting array records the way sacct does (123_4, 123_[5-7]).
SACCT_STANDIN = r'''#!/usr/bin/env python3
"""sacct stand-in for a test cluster without slurmdbd (written by tests/slurm_cluster.py)."""
import subprocess, sys

args = sys.argv[1:]
ids = [args[i + 1] for i, a in enumerate(args) if a in ("-j", "--jobs") and i + 1 < len(args)]
ids += [a.split("=", 1)[1] for a in args if a.startswith("--jobs=")]
print("JobID|State|NodeList")
for jid in ids:
    out = subprocess.run(["scontrol", "-o", "show", "job", jid.split(",")[0]], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        rec = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if "ArrayJobId" in rec and "ArrayTaskId" in rec:
            task = rec["ArrayTaskId"].split("%")[0]
            name = rec["ArrayJobId"] + ("_" + task if task.isdigit() else "_[" + task + "]")
        else:
            name = rec.get("JobId", jid)
        print("|".join([name, rec.get("JobState", "UNKNOWN"), rec.get("NodeList", "None")]))
'''


# ----------------------------------------------------------------------------------------------
# the running cluster


@dataclass
class SlurmCluster:
    """A started cluster. ``env`` is what every client call and test subprocess must use."""

    root: Path
    node: str
    cpus: int
    real_memory_mb: int
    partition: str = PARTITION
    env: dict[str, str] = field(default_factory=dict)

    @property
    def conf_path(self) -> Path:
        return self.root / "slurm.conf"

    def run(
        self, args: Sequence[str], *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run a Slurm client (sbatch, squeue, ...) against this cluster; text output captured."""
        proc = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise SlurmClusterError(f"`{' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def node_state(self) -> str:
        """The node's state as sinfo prints it (idle, mix, alloc, down*, drain, unk*...)."""
        return self.run(["sinfo", "-h", "-N", "-n", self.node, "-o", "%t"], check=False).stdout.strip()

    def job_states(self, job_id: str | int) -> dict[str, str]:
        """{"123_0": "COMPLETED", "123_1": "CANCELLED", ...} for a job or array job, from slurmctld."""
        out = self.run(["scontrol", "-o", "show", "job", str(job_id)], check=False).stdout
        states = {}
        for line in out.splitlines():
            rec = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            name = rec.get("JobId", "?")
            if "ArrayTaskId" in rec:
                name = f"{rec['ArrayJobId']}_{rec['ArrayTaskId']}"
            states[name] = rec.get("JobState", "UNKNOWN")
        return states

    def settled_states(self, job_id: str | int, timeout: float = 30.0) -> dict[str, str]:
        """job_states once no task is still pending, running or completing (or after `timeout` s).
        Why: submitit reads a task's result as soon as the task wrote it, a moment before Slurm
        ends the step; a CI run saw the sweep done with its last task still RUNNING."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.job_states(job_id)
            live = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING"} & set(states.values())
            if not live or time.monotonic() > deadline:
                return states
            time.sleep(0.5)

    def queued_job_ids(self) -> list[str]:
        out = self.run(["squeue", "-h", "-o", "%i"], check=False).stdout
        return [ln.strip() for ln in out.splitlines() if ln.strip()]

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for name in (
            "slurmctld.log",
            "slurmd.log",
            "munged.log",
            "slurmctld.stderr",
            "slurmd.stderr",
            "munged.stderr",
        ):
            path = self.root / "log" / name
            if path.exists() and path.stat().st_size:
                parts.append(f"--- {path}\n{_tail(path.read_text(errors='replace'), lines)}")
        return "\n".join(parts)

    def wait_idle(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.node_state()
            if state == "idle":
                return
            time.sleep(0.5)
        raise SlurmClusterError(
            f"node {self.node} not idle after {timeout:.0f} s (state {state!r}); logs:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop slurmd, slurmctld and munged (never raises)."""
        with contextlib.suppress(Exception):
            if self.queued_job_ids():
                self.run(["scancel", "--partition", self.partition], check=False)
                deadline = time.monotonic() + 15
                while self.queued_job_ids() and time.monotonic() < deadline:
                    time.sleep(0.5)
        stop_daemons(self.root)


def _pid_files(root: Path) -> dict[str, Path]:
    return {name: root / "run" / f"{name}.pid" for name in DAEMONS}


def stop_daemons(root: Path, grace_s: float = 10.0) -> None:
    """SIGTERM each daemon whose pid file is under ``root``, SIGKILL if it lingers past ``grace_s``."""
    for name, pid_file in _pid_files(root).items():
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if not _is_our_daemon(pid, name):
            pid_file.unlink(missing_ok=True)
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); count it as gone (its parent, not us, must reap it).
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return False


def _is_our_daemon(pid: int, name: str) -> bool:
    """Guard against a stale pid file whose pid now belongs to some other process."""
    try:
        return name in Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return False


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _start_daemon(root: Path, name: str, cmd: list[str], env: dict[str, str]) -> None:
    """Start a self-daemonising program; its pre-fork errors go to log/NAME.stderr."""
    with open(root / "log" / f"{name}.stderr", "w") as err:
        proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err, timeout=60)
    if proc.returncode != 0:
        raise SlurmClusterError(
            f"`{' '.join(cmd)}` exited with {proc.returncode}:\n"
            f"{_tail((root / 'log' / f'{name}.stderr').read_text(errors='replace'))}"
        )


def _wait_for(predicate, what: str, root: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    logs = SlurmCluster(root=root, node="?", cpus=0, real_memory_mb=0).log_tail()
    raise SlurmClusterError(f"timed out after {timeout:.0f} s waiting for {what}; logs:\n{logs}")


def start_cluster(root: str | os.PathLike) -> SlurmCluster:
    """Install if needed, configure and start a one-node cluster under ``root``; return it idle.

    Idempotent: daemons left by an earlier start in the same ``root`` are stopped first.
    On any failure the daemons started so far are stopped again before the error propagates.
    """
    ensure_installed()
    if os.geteuid() != 0:
        raise SlurmClusterError("the test cluster runs its daemons as root (SlurmUser=root); run as root")
    root = Path(root).resolve()
    stop_daemons(root)
    for sub in ("state", "spool", "run", "log", "munge", "bin"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # munged refuses a socket directory others can write to, and slurmstepd must traverse root.
    os.chmod(root, 0o755)
    os.chmod(root / "munge", 0o700)

    hw = node_hardware()
    ctld_port, slurmd_port = free_ports(2)
    conf = root / "slurm.conf"
    _atomic_write(conf, render_slurm_conf(root, hw, ctld_port, slurmd_port))
    sacct = root / "bin" / "sacct"
    _atomic_write(sacct, SACCT_STANDIN)
    sacct.chmod(0o755)

    # Jobs inherit this environment through sbatch (--export=ALL is the default): the private
    # SLURM_CONF, the sacct stand-in, and the PATH holding the interpreter running the tests.
    path = os.pathsep.join([str(root / "bin"), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, SLURM_CONF=str(conf), PATH=path)
    cluster = SlurmCluster(
        root=root, node=hw["NodeName"], cpus=int(hw["CPUs"]), real_memory_mb=int(hw["RealMemory"]), env=env
    )
    try:
        key = root / "munge" / "munge.key"
        if not key.exists():
            _start_daemon(root, "mungekey", ["mungekey", "--create", f"--keyfile={key}"], env)
        munge_socket = root / "munge" / "munge.socket"
        _start_daemon(
            root,
            "munged",
            [
                "munged",
                "--force",
                f"--key-file={key}",
                f"--socket={munge_socket}",
                f"--pid-file={root / 'run' / 'munged.pid'}",
                f"--log-file={root / 'log' / 'munged.log'}",
                f"--seed-file={root / 'munge' / 'munged.seed'}",
            ],
            env,
        )
        _wait_for(munge_socket.exists, f"munged socket {munge_socket}", root)
        _start_daemon(root, "slurmctld", ["slurmctld", "-f", str(conf)], env)
        _wait_for(
            lambda: cluster.run(["scontrol", "ping"], check=False).returncode == 0,
            "slurmctld to answer",
            root,
        )
        _start_daemon(root, "slurmd", ["slurmd", "-f", str(conf)], env)
        cluster.wait_idle()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def running_cluster(root: str | os.PathLike) -> Iterator[SlurmCluster]:
    """``with running_cluster(tmp) as cluster:`` starts it and always stops it afterwards."""
    cluster = start_cluster(root)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """One idle single-node cluster for the whole test session; stopped at session end."""
    # A short root: munge's socket path must fit in sun_path (108 bytes).
    root = tmp_path_factory.mktemp("slurm", numbered=True)
    try:
        with running_cluster(root) as cluster:
            yield cluster
    except SlurmClusterError as err:
        pytest.fail(f"single-node Slurm cluster: {err}", pytrace=False)
