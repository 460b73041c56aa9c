"""The Slurm plumbing on a real single-node cluster (tests/slurm_cluster.py), before the generator.

A tiny Hydra app (tests/apps/slurm_probe) is swept through Hydra's submitit launcher: each sweep
value must run as one task of one Slurm array job and write its own file, and a task cancelled
with scancel must leave no completion file and make the launcher fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm_cluster import DAEMONS, _alive, running_cluster, start_cluster

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "apps" / "slurm_probe" / "app.py"


def _sweep_cmd(tmp_path: Path, launcher: str, *overrides: str) -> list[str]:
    return [
        sys.executable,
        str(APP),
        "-m",
        "value=0,1,2",
        f"out_dir={tmp_path / 'out'}",
        f"hydra/launcher={launcher}",
        # The project's launcher configs (slurm_cpu, slurm_gpu, local) live in conf/.
        f"hydra.searchpath=[file://{ROOT / 'conf'}]",
        # submitit's working folder (job scripts, pickles, logs) goes under tmp_path with it.
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        "hydra.launcher.timeout_min=5",
        *overrides,
    ]


def _records(out: Path, prefix: str) -> dict[int, dict]:
    return {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in out.glob(f"{prefix}-*.json")}


def _wait_for_file(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(
                f"sweep exited ({proc.returncode}) before {path.name} appeared:\n{proc.stdout.read()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} did not appear within {timeout:.0f} s")
        time.sleep(0.2)


@pytest.mark.parametrize(
    "launcher, overrides",
    [
        ("submitit_slurm", ()),
        # The shipped CPU farm config, shrunk to this 2-core node.
        ("slurm_cpu", ("hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1")),
    ],
)
def test_sweep_runs_as_one_array_job_each_task_writes_its_own_file(
    slurm_cluster, tmp_path, launcher, overrides
):
    proc = subprocess.run(
        _sweep_cmd(tmp_path, launcher, *overrides),
        env=slurm_cluster.env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done = _records(tmp_path / "out", "done")
    assert sorted(done) == [0, 1, 2]
    array_ids = {rec["SLURM_ARRAY_JOB_ID"] for rec in done.values()}
    assert len(array_ids) == 1, f"expected one array job, got {array_ids}"
    assert sorted(rec["SLURM_ARRAY_TASK_ID"] for rec in done.values()) == ["0", "1", "2"]
    # Distinct Slurm jobs (one per array task), all on this node, all with the project's python.
    assert len({rec["SLURM_JOB_ID"] for rec in done.values()}) == 3
    assert {rec["python"] for rec in done.values()} == {sys.executable}
    if launcher == "slurm_cpu":
        assert {rec.get("SLURM_CPUS_PER_TASK") for rec in done.values()} == {"1"}
    (array_id,) = array_ids
    assert slurm_cluster.settled_states(array_id) == {f"{array_id}_{i}": "COMPLETED" for i in range(3)}
    # Every task's submitit log sits under tmp_path, named by its array task.
    submitit = tmp_path / "multirun" / ".submitit"
    task_dirs = sorted(p.name for p in submitit.iterdir() if p.is_dir() and "_" in p.name)
    assert task_dirs == [f"{array_id}_{i}" for i in range(3)]
    if launcher == "slurm_cpu":  # the config's setup lines ran in the sbatch script
        assert "drs task on" in (submitit / f"{array_id}_0" / f"{array_id}_0_0_log.out").read_text()


def test_scancel_of_a_running_task_is_seen(slurm_cluster, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _sweep_cmd(tmp_path, "submitit_slurm", "slow_value=1", "slow_sleep_s=600"),
        env=slurm_cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        _wait_for_file(out / "started-1.json", proc, timeout=120)
        started = json.loads((out / "started-1.json").read_text())
        task = f"{started['SLURM_ARRAY_JOB_ID']}_{started['SLURM_ARRAY_TASK_ID']}"
        slurm_cluster.run(["scancel", task])
        # The launcher must notice (not wait for the 10-minute sleep) and fail the sweep.
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, output
    assert task in output, output  # the failure names the cancelled task
    assert sorted(_records(out, "done")) == [0, 2]  # the other tasks finished; task 1 wrote no completion
    states = slurm_cluster.settled_states(started["SLURM_ARRAY_JOB_ID"])
    assert states[task] == "CANCELLED", states


def test_cluster_restarts_in_place_and_stops_every_daemon(slurm_cluster, tmp_path):
    """A second cluster beside the session one (own ports, socket, state): start is idempotent
    in one directory, and stop ends its jobs and daemons, so a failed test leaks nothing."""
    root = tmp_path / "c"
    first = start_cluster(root)
    pids = _daemon_pids(root)
    with running_cluster(root) as again:  # same root again: the old daemons are replaced
        assert again.node_state() == "idle"
        assert first.conf_path == again.conf_path
        new_pids = _daemon_pids(root)
        assert not any(_alive(pid) for pid in pids.values())
        assert all(_alive(pid) for pid in new_pids.values())
        pid_file = tmp_path / "job.pid"
        again.run(
            [
                "sbatch",
                "--output",
                str(tmp_path / "job.out"),
                "--wrap",
                f"echo $$ > {pid_file}; exec sleep 300",
            ]
        )
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        job_pid = int(pid_file.read_text())
        assert _alive(job_pid)
    assert not _alive(job_pid), "stop() must cancel running jobs"
    assert not any(_alive(pid) for pid in new_pids.values())
    assert not list((root / "run").glob("*.pid"))
    # The session cluster is untouched: its node still answers and takes work. "plnd" (the backfill
    # scheduler has planned a job that another test left pending, e.g. a requeued one) counts too.
    assert slurm_cluster.node_state() in ("idle", "plnd", "mix", "alloc")


def _daemon_pids(root: Path) -> dict[str, int]:
    return {name: int((root / "run" / f"{name}.pid").read_text()) for name in DAEMONS}
