"""Who started this process, and where it sits in the run: torchrun, srun, or nobody.

- ``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; they win whenever
  they are there (also when torchrun itself runs inside a Slurm job);
- ``srun`` (a plain sbatch script, or Hydra's submitit launcher, which runs its tasks through
  srun) sets SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID and SLURM_STEP_NODELIST; rank 0 is
  the first task, so it runs on the first node of the step, which becomes the rendezvous host.
  The port is MASTER_PORT when set, else one derived from the job id, so every task of a job
  computes the same one without talking to the others;
- anything else is one process. A batch script that calls `drs-train` directly, without srun,
  sees SLURM_NTASKS and SLURM_PROCID but no step variables: it trains as one process.

No torch here: `drs-train` reads its rank before Hydra starts, and `--help` must stay fast.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

# Ports derived from a Slurm job id fall in [PORT_BASE, PORT_BASE + PORT_SPAN): below Linux's
# ephemeral range (32768+), so an outgoing connection does not already hold the port.
PORT_BASE, PORT_SPAN = 20000, 12000


@dataclass(frozen=True)
class LaunchInfo:
    """Where this process sits in the run, as its launcher described it.

    source: "torchrun", "slurm" or "single". master_addr/master_port: the rendezvous (rank 0's
    host), None for torchrun (torch reads its variables itself) and for one process.
    """

    source: str
    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None = None
    master_port: int | None = None


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: "gpu[003-010,012],cpu1" -> "gpu003", "vm" -> "vm".

    Only the first name is needed (rank 0 runs there), so each bracket is replaced by the first
    item of its first range, written as Slurm wrote it (zero padding kept).
    """
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):  # the first top-level comma ends the first name pattern
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    name = re.sub(r"\[([^\],\-]+)[^\]]*\]", r"\1", nodelist[:end].strip())
    if not name or "[" in name or "]" in name:
        raise ValueError(f"cannot read the first host of the Slurm node list {nodelist!r}")
    return name


def _slurm_port(env: Mapping[str, str]) -> int:
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"])
    return PORT_BASE + int(env["SLURM_JOB_ID"]) % PORT_SPAN


def launch_info(env: Mapping[str, str] | None = None) -> LaunchInfo:
    """Read torchrun's variables, else Slurm's step variables, else: one process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchInfo("torchrun", int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    if "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        world = int(env["SLURM_STEP_NUM_TASKS"])
        if world > 1:
            nodelist = env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]
            addr = env.get("MASTER_ADDR") or first_host(nodelist)
            return LaunchInfo("slurm", int(env["SLURM_PROCID"]), world, int(env.get("SLURM_LOCALID", "0")),
                              addr, _slurm_port(env))
    return LaunchInfo("single", 0, 1, 0)


def process_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's global rank (0 when alone), before any process group exists."""
    return launch_info(env).rank


def missed_srun(env: Mapping[str, str] | None = None) -> bool:
    """A Slurm job of several tasks whose batch script started drs-train itself, not through srun."""
    env = os.environ if env is None else env
    if "RANK" in env or "SLURM_STEP_NUM_TASKS" in env:
        return False
    value = env.get("SLURM_NTASKS", "1")
    return value.isdigit() and int(value) > 1
