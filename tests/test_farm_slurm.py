"""The render farm end to end on a real single-node Slurm cluster (tests/slurm_cluster.py).

Against one tiny local render of a 3-shard dataset (the reference), through Hydra's
submitit_slurm launcher:

a. the sweep `drs-generate -m shard=0,1,2` gives the same shard bytes, and `drs-verify` merges the
   tasks' manifest parts into the same manifest;
b. a task SIGKILLed mid-shard leaves nothing that verifies as complete (drs-verify names that
   shard, exit 1), and `drs-verify --repair` finishes it to the same bytes;
c. a flipped byte and a deleted shard are named by drs-verify and re-rendered by
   `drs-verify --repair --launcher submitit_slurm` to the same bytes.

Every subprocess runs with the cluster's environment (its SLURM_CONF, and the sacct stand-in
without which submitit waits forever on a killed task) and a timeout, so a hang fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from generator.dataset_format import read_manifest, sha256_file, shard_path
from generator.manifest import part_path, shard_is_complete

pytestmark = [pytest.mark.slurm, pytest.mark.blender]

BIN = Path(sys.executable).parent
# 3 shards of 8 tiny sequences. One lighting render per sequence (covers_per_lighting=1) so a
# shard caches its sequences one by one and a kill after the first still lands mid-shard.
CONFIG = [
    "num_sequences=24",
    "sequences_per_shard=8",
    "sequence_length=3",
    "resolution=32",
    "seed=11",
    "render.covers_per_lighting=1",
    "progress=false",
]
SHARDS = 3
SWEEP_TIMEOUT_S = 300


def _run(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _sweep(dataset: Path, shards: str = "0,1,2") -> list[str]:
    return [
        str(BIN / "drs-generate"),
        "-m",
        f"shard={shards}",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.timeout_min=5",
        f"out_dir={dataset}",
        *CONFIG,
    ]


def _verify(dataset: Path, *args: str) -> list[str]:
    return [str(BIN / "drs-verify"), str(dataset), "--no-progress", *args]


def _digests(dataset: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted((dataset / "shards").glob("*.h5"))}


def _shard_records(dataset: Path) -> list[dict]:
    return read_manifest(dataset)["shards"]


def _submitit_dirs(dataset: Path) -> list[str]:
    """Array-task folders (JOB_TASK) of every sweep run on `dataset`: where each task's log lives."""
    return sorted(p.name for p in dataset.glob("logs/sweep-*/.submitit/*_*") if p.is_dir())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The dataset rendered in one local run (no Slurm): what every farm path must reproduce."""
    dataset = tmp_path_factory.mktemp("farm") / "reference"
    proc = _run(
        [str(BIN / "drs-generate"), f"out_dir={dataset}", *CONFIG], dict(os.environ), 300, dataset.parent
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_digests(dataset)) == SHARDS
    return dataset


def test_sweep_renders_the_same_bytes_as_a_local_run(slurm_cluster, reference, tmp_path):
    dataset = tmp_path / "farm"
    proc = _run(_sweep(dataset), slurm_cluster.env, SWEEP_TIMEOUT_S, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # One array job, one task per shard, each with its own log folder.
    tasks = _submitit_dirs(dataset)
    assert len(tasks) == SHARDS and len({t.split("_")[0] for t in tasks}) == 1, tasks
    # Tasks write only their shard and part; the manifest comes from drs-verify's merge.
    assert not (dataset / "manifest.json").exists()
    assert all(part_path(dataset, i).exists() for i in range(SHARDS))

    verify = _run(_verify(dataset), slurm_cluster.env, 120, tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"OK, {SHARDS} shards, 24 sequences" in verify.stdout
    assert _digests(dataset) == _digests(reference)
    assert _shard_records(dataset) == _shard_records(reference)
    assert read_manifest(dataset)["config"] == read_manifest(reference)["config"]


def test_task_killed_mid_shard_is_named_then_repaired_to_the_same_bytes(slurm_cluster, reference, tmp_path):
    dataset = tmp_path / "killed"
    def cached_sequences() -> list[Path]:  # the cache is keyed by the config's fingerprint
        return sorted(dataset.glob(".partial/*/shard-00001/seq-*.npz"))

    sweep = subprocess.Popen(
        _sweep(dataset),
        env=slurm_cluster.env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(cached_sequences, sweep, "shard 1's first cached sequence", 240)
        task, killed = _sigkill_array_task(slurm_cluster, array_task=1)
        output, _ = sweep.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()
    assert killed, f"found no process of Slurm task {task} to kill"
    # The scheduler saw a failure here, but drs-verify never relies on that: it reads the files.
    assert sweep.returncode != 0 and task in output, output
    cached = [p.name for p in cached_sequences()]
    assert 1 <= len(cached) < 8, f"the kill did not land mid-shard: cached {cached}"
    assert not shard_path(dataset, 1).exists() and not part_path(dataset, 1).exists()
    assert not shard_is_complete(dataset, 1)
    assert all(shard_is_complete(dataset, i) for i in (0, 2))

    verify = _run(_verify(dataset), slurm_cluster.env, 120, tmp_path)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "1 of 3 shards bad: [1]" in verify.stderr
    assert "shard 1 (shards/shard-00001.h5): missing" in verify.stderr
    assert read_manifest(dataset)["missing_shards"] == [1]
    # The killed task's log is where the README says to look.
    assert list(dataset.glob(f"logs/sweep-*/.submitit/{task}/{task}_0_log.err")), _submitit_dirs(dataset)

    # Local repair: re-renders shard 1 only, resuming from the killed task's cached sequences.
    repair = _run(_verify(dataset, "--repair"), slurm_cluster.env, 300, tmp_path)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert "repairing shards [1]" in repair.stderr and "repaired shards [1]" in repair.stderr
    assert _digests(dataset) == _digests(reference)
    assert _shard_records(dataset) == _shard_records(reference)
    assert not (dataset / ".partial").exists()


def test_flipped_byte_and_deleted_shard_are_named_and_repaired_through_slurm(
    slurm_cluster, reference, tmp_path
):
    dataset = tmp_path / "damaged"
    shutil.copytree(reference, dataset, ignore=shutil.ignore_patterns("logs"))
    victim = shard_path(dataset, 0)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))
    shard_path(dataset, 2).unlink()

    verify = _run(_verify(dataset, "--json", str(tmp_path / "report.json")), slurm_cluster.env, 120, tmp_path)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "shard 0 (shards/shard-00000.h5): corrupt: sha256" in verify.stderr
    assert "shard 2 (shards/shard-00002.h5): missing" in verify.stderr
    assert "shard-00001" not in verify.stderr
    assert json.loads((tmp_path / "report.json").read_text())["bad_shards"] == [0, 2]

    repair = _run(
        _verify(
            dataset,
            "--repair",
            "--launcher",
            "submitit_slurm",
            "hydra.launcher.timeout_min=5",
            "--timeout",
            "240",
        ),
        slurm_cluster.env,
        300,
        tmp_path,
    )
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert _digests(dataset) == _digests(reference)
    assert _shard_records(dataset) == _shard_records(reference)
    # Exactly the bad shards went to Slurm, as one array job; the damaged file is kept aside.
    tasks = _submitit_dirs(dataset)
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1, tasks
    assert (dataset / "quarantine" / "shards" / "shard-00000.h5").read_bytes() == bytes(data)
    again = _run(_verify(dataset), slurm_cluster.env, 120, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr


# ----------------------------------------------------------------------------------------------
# helpers


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the sweep exited ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s")
        time.sleep(0.02)


def _sigkill_array_task(cluster, array_task: int) -> tuple[str, list[int]]:
    """SIGKILL every process of the running array task `array_task` (its Python and its Blender
    worker), as the OOM killer or a lost node would: no signal handler, no chance to finish.

    `scancel` is not used: it sends SIGTERM first, which submitit ignores, and the task may finish
    its shard during Slurm's KillWait. Returns ("ARRAYJOB_TASK", killed pids).
    """
    rows = cluster.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %A"]).stdout.split()
    pairs = dict(zip(rows[::2], rows[1::2], strict=True))
    task = next((name for name in pairs if name.endswith(f"_{array_task}")), None)
    assert task is not None, f"array task {array_task} is not running: {pairs}"
    job_id = pairs[task]
    killed = []
    for pid in _step_pids(job_id, str(cluster.conf_path)):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return task, killed


def _step_pids(job_id: str, slurm_conf: str) -> list[int]:
    """Processes of Slurm job `job_id`'s srun step (submitit runs the task there), from /proc.

    Job ids restart at 1 on every test cluster, and other test sessions may run their own cluster
    on this machine: the job's SLURM_CONF tells ours apart."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(
                item.split("=", 1)
                for item in (entry / "environ").read_bytes().decode(errors="replace").split("\0")
                if "=" in item
            )
        except OSError:
            continue  # exited meanwhile
        ours = env.get("SLURM_JOB_ID") == job_id and env.get("SLURM_CONF") == slurm_conf
        if ours and env.get("SLURM_STEP_ID") not in (None, "batch", "4294967294"):
            pids.append(int(entry.name))
    return pids
