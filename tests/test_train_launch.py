"""Launch plumbing without a cluster: ranks from torchrun/srun variables, the out_dir-shared check
between two real gloo processes, rank-0-only Hydra output, and a local run stopped by SIGTERM.

The Slurm end of it (a real job, SIGUSR1, requeue) is tests/test_train_slurm.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import astuple
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir

import trainer.config  # noqa: F401  (registers train_schema and the drs_rank0 resolver)
from model.checkpoint import load_checkpoint
from tests.slurm_cluster import free_ports
from trainer.launch_env import PORT_BASE, PORT_SPAN, first_host, launch_info, missed_srun
from trainer.preemption import StopSignals, agreed_stop, restart_count, slurm_job_id

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = str(ROOT / "conf")

# What srun gives task 3 of a 4-task step over two nodes (values as Slurm 22.05 writes them).
SRUN_TASK = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4",
             "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_JOB_NODELIST": "gpu[007-008]"}
# What the batch script itself sees (no step variables).
BATCH_STEP = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "gpu[007-008]"}


@pytest.mark.parametrize("nodelist, first", [
    ("vm", "vm"),
    ("gpu[007-008]", "gpu007"),
    ("gpu[003-010,012],cpu1", "gpu003"),
    ("a,b[1-2]", "a"),
    ("rack[2-3]-node[09-10]", "rack2-node09"),
    ("n[5,1]", "n5"),
])
def test_first_host_of_a_slurm_nodelist(nodelist, first):
    assert first_host(nodelist) == first


def test_srun_task_reads_rank_world_and_rendezvous_from_slurm():
    info = launch_info(SRUN_TASK)
    assert (info.source, info.rank, info.world_size, info.local_rank) == ("slurm", 3, 4, 1)
    assert info.master_addr == "gpu007" and info.master_port == PORT_BASE + 4242 % PORT_SPAN
    info = launch_info({**SRUN_TASK, "MASTER_PORT": "29999", "MASTER_ADDR": "10.0.0.7"})
    assert (info.master_addr, info.master_port) == ("10.0.0.7", 29999)


def test_torchrun_variables_win_over_slurm_and_a_batch_step_is_one_process():
    torchrun = {**SRUN_TASK, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    assert astuple(launch_info(torchrun))[:4] == ("torchrun", 1, 2, 1)
    assert not missed_srun(torchrun)
    # The batch script calling drs-train itself: one process (and a warning), not rank 0 of 4
    # waiting forever for three ranks nobody started.
    assert astuple(launch_info(BATCH_STEP))[:3] == ("single", 0, 1) and missed_srun(BATCH_STEP)
    assert astuple(launch_info({}))[:3] == ("single", 0, 1) and not missed_srun({})
    one_task = {**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}
    assert astuple(launch_info(one_task))[:3] == ("single", 0, 1)


def test_requeue_target_and_restart_count_from_slurm():
    assert slurm_job_id({"SLURM_JOB_ID": "17"}) == "17"
    assert slurm_job_id({"SLURM_JOB_ID": "18", "SLURM_ARRAY_JOB_ID": "17", "SLURM_ARRAY_TASK_ID": "0"}) == "17_0"
    assert slurm_job_id({}) is None
    assert restart_count({}) == 0 and restart_count({"SLURM_RESTART_COUNT": "2"}) == 2


def test_hydra_output_is_rank0s_alone(monkeypatch):
    def output_subdir():
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="train", return_hydra_config=True).hydra.output_subdir

    for key in ("RANK", "WORLD_SIZE", *SRUN_TASK):
        monkeypatch.delenv(key, raising=False)
    assert output_subdir() == ".hydra"
    for key, value in SRUN_TASK.items():
        monkeypatch.setenv(key, value)
    assert output_subdir() is None  # rank 3 writes no .hydra/
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert output_subdir() == ".hydra"


def test_stop_signals_are_recorded_ranked_and_handed_back():
    from trainer.distributed import DistEnv

    env = DistEnv(0, 1, 0, torch.device("cpu"))
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as stop:
        assert agreed_stop(stop, env) == 0
        os.kill(os.getpid(), signal.SIGTERM)
        assert agreed_stop(stop, env) == signal.SIGTERM
        # TERM then USR2 is submitit's preemption: the warning wins, so the run requeues.
        os.kill(os.getpid(), signal.SIGUSR2)
        assert agreed_stop(stop, env) == signal.SIGUSR2
    assert signal.getsignal(signal.SIGUSR1) is before


# ----------------------------------------------------------------------------------------------
# out_dir shared between ranks: two real gloo processes


def _shared_check(rank: int, port: int, cases: list[list[str]], results: str) -> None:
    """Rank `rank` of 2: check_shared_out_dir on cases[i][rank] for each case; outcomes to results/."""
    import torch.distributed as dist

    from trainer.distributed import DistEnv, OutDirNotShared, check_shared_out_dir

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for i, dirs in enumerate(cases):
            try:
                check_shared_out_dir(DistEnv(rank, 2, rank, torch.device("cpu")), Path(dirs[rank]))
                outcome = "ok"
            except OutDirNotShared as exc:
                outcome = f"error: {exc}"
            Path(results, f"case{i}-rank{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: ~10 s on a shared 2-core machine
def test_out_dir_not_shared_between_ranks_is_one_clear_error_on_every_rank(tmp_path):
    shared = tmp_path / "shared"
    # Case 1: rank 1 looks at another directory, as on a node whose out_dir is a local disk.
    cases = [[str(shared), str(shared)], [str(tmp_path / "node0"), str(tmp_path / "node1")]]
    (port,) = free_ports(1)
    mp.start_processes(_shared_check, args=(port, cases, str(tmp_path)), nprocs=2, start_method="spawn")
    assert [(tmp_path / f"case0-rank{r}.txt").read_text() for r in range(2)] == ["ok", "ok"]
    assert list(shared.iterdir()) == []  # the marker is removed again
    for r in range(2):
        outcome = (tmp_path / f"case1-rank{r}.txt").read_text()
        assert outcome.startswith(f"error: out_dir={tmp_path / 'node'}"), outcome
        assert "rank 1 on" in outcome and "rank 0 on" not in outcome.split("cannot see")[0], outcome
        assert ".rank0-marker" in outcome and "\n" not in outcome


# ----------------------------------------------------------------------------------------------
# a local run stopped by SIGTERM


@pytest.mark.slow
def test_sigterm_saves_stops_without_requeue_and_resume_is_exact(tmp_path):
    from tests.fixtures_data import make_tiny_dataset
    from trainer.train import train

    data = make_tiny_dataset(tmp_path / "ds", num_sequences=8, k=5, size=32)
    config = ["debug=tiny", "model=drs_small", f"data.train={data}", f"data.val={data}", "trainer.max_steps=30",
              "trainer.ckpt_every=5", "trainer.val_every=100", "trainer.device=cpu"]
    out = tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("SLURM_JOB_ID", "RANK", "WORLD_SIZE"):
        env.pop(key, None)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "drs-train"), *config, f"out_dir={out}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = out / "checkpoints" / "step-00000005.pt"
        deadline = time.monotonic() + 240
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "stopped on SIGTERM after saving a checkpoint (not requeued; resume with resume=true)" in output
    step = load_checkpoint(sorted((out / "checkpoints").glob("step-*.pt"))[-1])["step"]
    assert 5 <= step < 30, output[-3000:]

    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        resumed = train(compose(config_name="train", overrides=[*config, f"out_dir={out}", "resume=true"]))
        straight = train(compose(config_name="train", overrides=[*config, f"out_dir={tmp_path / 'straight'}"]))
    assert resumed["step"] == straight["step"] == 30 and resumed["preempted"] is None
    a = load_checkpoint(out / "checkpoints" / "step-00000030.pt")["model"]
    b = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step-00000030.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


# ----------------------------------------------------------------------------------------------
# launcher configs and the batch script, against README's "Training on a cluster" table


def _train_launcher(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


def _readme_training_table() -> dict[str, dict[str, str]]:
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
    start = next(i for i, line in enumerate(lines) if line.startswith("| launcher | nodes | tasks_per_node"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header) or not cells[0].startswith("`"):
            break
        rows[cells[0].strip("`")] = dict(zip(header[1:], cells[1:], strict=True))
    return rows


def _sbatch_defaults() -> dict[str, str]:
    lines = (ROOT / "conf" / "slurm" / "train.sbatch").read_text().splitlines()
    return dict(line.removeprefix("#SBATCH --").split("=", 1) for line in lines if line.startswith("#SBATCH --")
                and "=" in line)


def test_training_launchers_and_batch_script_hold_what_the_readme_documents():
    table = _readme_training_table()
    assert set(table) == {"slurm_train_gpu", "slurm_train_cpu", "conf/slurm/train.sbatch"}

    def number(cell: str) -> int | None:
        return None if cell == "–" else int(cell)

    for name in ("slurm_train_gpu", "slurm_train_cpu"):
        cfg, row = _train_launcher(name), table[name]
        assert cfg._target_.endswith("SlurmLauncher") and cfg.max_num_timeout > 0
        for key in ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min"):
            assert cfg[key] == number(row[key]), (name, key)
        assert row["signal before the limit"] == f"USR2, {cfg.signal_delay_s} s"
        assert any("OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK" in line for line in cfg.setup), name
    assert _train_launcher("slurm_train_cpu", "hydra.launcher.nodes=3").nodes == 3

    script, row = _sbatch_defaults(), table["conf/slurm/train.sbatch"]
    assert script["nodes"] == row["nodes"] and script["ntasks-per-node"] == row["tasks_per_node"]
    assert script["cpus-per-task"] == row["cpus_per_task"] and "gpus-per-node" not in script
    assert script["time"] == f"{row['timeout_min'].split()[0]}:00:00"
    signal_name, delay = script["signal"].split("@")
    assert row["signal before the limit"] == f"{signal_name}, {delay} s"
    assert "--requeue" in (ROOT / "conf" / "slurm" / "train.sbatch").read_text()
