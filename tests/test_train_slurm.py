"""drs-train as a 2-task CPU job (gloo) on a real single-node Slurm cluster (tests/slurm_cluster.py).

Against one local `torchrun --nproc_per_node=2` run of the same config (the reference):

a. through Hydra's submitit launcher (hydra/launcher=slurm_train_cpu), the job's checkpoints hold
   the same weights, and only rank 0 writes the log file, .hydra/ and the checkpoints;
b. the same job sent SIGUSR1 mid-run (what Slurm sends before the time limit) saves at the next
   step, requeues itself, resumes in the requeued run and ends with the same weights;
c. the plain batch script conf/slurm/train.sbatch (srun, no submitit) does the same as (b).

Every run pins model=drs_small so the default model may change without slowing these down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint
from tests.slurm_cluster import free_ports
from trainer.checkpoints import step_checkpoints

pytestmark = [pytest.mark.slurm, pytest.mark.torchrun]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SBATCH_SCRIPT = ROOT / "conf" / "slurm" / "train.sbatch"
MAX_STEPS = 30
CKPT_EVERY = 5  # the first checkpoint tells the signalling tests that training is under way
CONFIG = ["debug=tiny", "model=drs_small", f"trainer.max_steps={MAX_STEPS}", f"trainer.ckpt_every={CKPT_EVERY}",
          "trainer.val_every=100", "trainer.device=cpu"]
RUN_TIMEOUT_S = 300
CREDENTIAL_CLOCK_S = 3.0  # seconds a forced restart waits after a requeue (see _signal_mid_run)


def _env(base: dict[str, str]) -> dict[str, str]:
    # A fresh rendezvous port: job ids restart at 1 on every test cluster, so two test sessions on
    # one machine would otherwise derive the same port from the same job id.
    port = free_ports(1)[0]
    return {**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MASTER_PORT": str(port)}


def _weights(out_dir: Path, step: int = MAX_STEPS) -> dict[str, torch.Tensor]:
    return load_checkpoint(out_dir / "checkpoints" / f"step-{step:08d}.pt")["model"]


def _assert_same_weights(out_dir: Path, reference: Path) -> None:
    ours, ref = _weights(out_dir), _weights(reference)
    assert ours.keys() == ref.keys()
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tests.fixtures_data import make_tiny_dataset

    return make_tiny_dataset(tmp_path_factory.mktemp("slurm_train") / "ds", num_sequences=8, k=5, size=32)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """The weights every Slurm run must reproduce: 2 local processes under torchrun."""
    out = tmp_path_factory.mktemp("reference") / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "trainer.cli_train", *CONFIG, f"data.train={data}", f"data.val={data}", f"out_dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(dict(os.environ)), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _launcher_cmd(data: Path, out: Path) -> list[str]:
    return [str(BIN / "drs-train"), "-m", "hydra/launcher=slurm_train_cpu", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=5", *CONFIG,
            f"data.train={data}", f"data.val={data}", f"out_dir={out}"]


def test_two_task_job_through_the_launcher_trains_like_torchrun(slurm_cluster, data, reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(_launcher_cmd(data, out), cwd=tmp_path, env=_env(slurm_cluster.env),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert step_checkpoints(out) and [s for s, _ in step_checkpoints(out)] == [s for s, _ in step_checkpoints(reference)]
    payload = load_checkpoint(out / "checkpoints" / f"step-{MAX_STEPS:08d}.pt")
    assert payload["extra"]["world_size"] == 2
    _assert_same_weights(out, reference)

    # One job of two tasks; each task has its own stdout, but the run's log file, .hydra/ and
    # TensorBoard file come from rank 0 alone.
    (job,) = [p for p in (out / ".submitit").iterdir() if p.is_dir()]
    rank0, rank1 = (job / f"{job.name}_{r}_log.out" for r in (0, 1))
    assert "Slurm task 0 of 2" in rank0.read_text() and "val PSNR" in rank0.read_text()
    assert "val PSNR" not in rank1.read_text() and "Slurm task" not in rank1.read_text()
    log = (out / "0" / "cli_train.log").read_text()
    assert log.count("val PSNR") == 1 and "Slurm task 0 of 2" in log and "task 1" not in log
    assert sorted(p.name for p in (out / "0" / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert len(list((out / "tb").glob("events.out.tfevents*"))) == 1
    assert not list(out.glob(".rank0-marker*"))  # the shared-out_dir check cleans up after itself


def test_sigusr1_mid_run_saves_requeues_and_resumes_to_the_same_weights(slurm_cluster, data, reference, tmp_path):
    out = tmp_path / "run"
    launcher = subprocess.Popen(_launcher_cmd(data, out), cwd=tmp_path, env=_env(slurm_cluster.env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        job = _signal_mid_run(slurm_cluster, out, launcher)
        output, _ = launcher.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert launcher.returncode == 0, output[-3000:]
    log = (out / ".submitit" / job / f"{job}_0_log.out").read_text()
    _assert_stopped_requeued_resumed(slurm_cluster, job, log)
    _assert_same_weights(out, reference)


def test_sbatch_script_trains_requeues_on_sigusr1_and_resumes_to_the_same_weights(
    slurm_cluster, data, reference, tmp_path
):
    out = tmp_path / "run"
    env = _env(slurm_cluster.env)
    submit = subprocess.run(
        # One DataLoader worker per rank: Slurm signals it too, and it must outlive the signal.
        ["sbatch", "--parsable", "--ntasks-per-node=2", "--cpus-per-task=1", str(SBATCH_SCRIPT), *CONFIG,
         "data.num_workers=1", f"data.train={data}", f"data.val={data}", f"out_dir={out}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    _signal_mid_run(slurm_cluster, out, None, job)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (state := slurm_cluster.job_states(job).get(job)) not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        assert time.monotonic() < deadline, f"job {job} still {state}"
        time.sleep(0.5)
    log = (tmp_path / f"slurm-{job}.out").read_text()  # the script's --output, appended on requeue
    assert state == "COMPLETED", log[-3000:]
    _assert_stopped_requeued_resumed(slurm_cluster, job, log)
    assert log.count("drs-train job") == 2  # the script's first line, once per run of the job
    _assert_same_weights(out, reference)
    assert (out / ".hydra").is_dir() and (out / "cli_train.log").exists()


# ----------------------------------------------------------------------------------------------
# helpers


def _signal_mid_run(cluster, out: Path, launcher: subprocess.Popen | None, job: str | None = None) -> str:
    """Wait for the first checkpoint, send USR1 to the job's tasks as Slurm does before the time
    limit, then wait for the requeue and let the job start again at once. Returns the job id."""
    first = out / "checkpoints" / f"step-{CKPT_EVERY:08d}.pt"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not first.exists():
        if launcher is not None and launcher.poll() is not None:
            pytest.fail(f"the launcher exited ({launcher.returncode}) before {first}:\n{launcher.stdout.read()}")
        assert time.monotonic() < deadline, f"no {first} within {RUN_TIMEOUT_S} s"
        time.sleep(0.02)
    if job is None:
        (job,) = cluster.queued_job_ids()
    cluster.run(["scancel", "--signal=USR1", job])
    # A requeued job waits ~2 minutes before it may start again (its BeginTime); an admin, or
    # this test, can let it go at once. The wait is Slurm's, not the trainer's.
    while not _requeued(cluster, job):
        assert time.monotonic() < deadline, f"job {job} was not requeued: {cluster.job_states(job)}"
        time.sleep(0.2)
    # slurmd revoked the first run's credential when it killed it, and refuses a new credential made
    # in the same second or earlier ("Killing non-startable batch JobId=N: Job credential revoked":
    # the job ends FAILED). Slurm's own ~2-minute BeginTime avoids this; starting at once must first
    # let the clock pass the revocation (whole seconds, stamped when slurmd got to it).
    time.sleep(CREDENTIAL_CLOCK_S)
    cluster.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])
    return job


def _requeued(cluster, job: str) -> bool:
    out = cluster.run(["scontrol", "-o", "show", "job", job], check=False).stdout
    rec = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    return rec.get("JobState") == "PENDING" and rec.get("Restarts") == "1"


def _assert_stopped_requeued_resumed(cluster, job: str, log: str) -> None:
    """The job log shows: USR1 caught mid-run, a checkpoint at that step, one requeue, a resume from it."""
    stop_lines = [ln for ln in log.splitlines() if "SIGUSR1: stopped at step" in ln]
    assert len(stop_lines) == 1, log[-3000:]
    step = int(stop_lines[0].split("stopped at step ")[1].split(",")[0])
    assert CKPT_EVERY <= step < MAX_STEPS, stop_lines
    assert stop_lines[0].endswith(f"checkpoints/step-{step:08d}.pt"), stop_lines  # saved at the stop
    assert f"requeued Slurm job {job}" in log
    assert "Slurm restart 1 of this job" in log
    assert f"step-{step:08d}.pt at step {step}" in log  # "resumed from ... at step N"
    assert cluster.job_states(job)[job] in ("RUNNING", "COMPLETING", "COMPLETED")
