"""DDP plumbing: one process per device; gloo on CPU, NCCL on CUDA; rank 0 writes.

trainer/launch_env.py reads who started the processes (torchrun, srun, or nobody); this module
joins them into one process group, places each on its device, and checks that out_dir is one
directory for all of them.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from generator.dataset_format import atomic_path
from trainer.launch_env import launch_info, missed_srun

log = logging.getLogger(__name__)

# + a random token: a name no node has looked up before, so no node's NFS lookup cache (which may
# remember an earlier run's marker, or its absence) can answer for the server.
SHARED_MARKER = ".rank0-marker-"


class OutDirNotShared(ValueError):
    """Some rank cannot see what rank 0 wrote to out_dir (a node-local disk): a user's mistake."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main rank logs, validates and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when CUDA is present, else cpu; anything else as given.

    A task that sees fewer GPUs than its local rank (Slurm's --gpus-per-task narrows
    CUDA_VISIBLE_DEVICES to the task's own GPU) takes local_rank modulo the visible count.
    """
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={name!r} but CUDA is not available here; use trainer.device=auto or cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    return device


def init_distributed(device_name: str = "auto") -> DistEnv:
    """Join the process group torchrun or srun describe (see launch_info); one process: nothing."""
    info = launch_info()
    if info.source == "single" and missed_srun():
        log.warning("this Slurm job has SLURM_NTASKS=%s but drs-train was not started by srun: training as one "
                    "process (start it as `srun drs-train ...`, see conf/slurm/train.sbatch)", os.environ["SLURM_NTASKS"])
    device = resolve_device(device_name, info.local_rank)
    if info.world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if info.source == "slurm":
            log.info("Slurm task %d of %d on %s, rendezvous at %s:%d", info.rank, info.world_size,
                     socket.gethostname(), info.master_addr, info.master_port)
            dist.init_process_group(backend=backend, init_method=f"tcp://{info.master_addr}:{info.master_port}",
                                    rank=info.rank, world_size=info.world_size)
        else:
            dist.init_process_group(backend=backend)
    return DistEnv(info.rank, info.world_size, info.local_rank, device)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        # NCCL's barrier needs to know the device, or it guesses one per rank (and can hang).
        dist.barrier(device_ids=[env.device.index] if env.device.type == "cuda" else None)


def broadcast_flag(env: DistEnv, value: bool) -> bool:
    """rank 0's boolean, on every rank (e.g. 'a checkpoint to resume from exists')."""
    if not env.distributed:
        return value
    t = torch.tensor([int(value)], device=env.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def max_over_ranks(env: DistEnv, value: int) -> int:
    """The largest of every rank's integer (e.g. 'a stop signal arrived here'), on every rank."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def check_shared_out_dir(env: DistEnv, out_dir: Path) -> None:
    """Every rank must see the files rank 0 writes, or resume and checkpoints silently diverge.

    Rank 0 writes a random token to out_dir/.rank0-marker-<token>; each rank reads it back. Raises
    OutDirNotShared on every rank, naming the ranks and hosts that did not see it.
    """
    if not env.distributed:
        return
    token = [secrets.token_hex(16) if env.is_main else None]
    dist.broadcast_object_list(token, src=0)
    marker = out_dir / (SHARED_MARKER + token[0])
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(marker) as tmp:
            tmp.write_text(token[0])
    barrier(env)
    try:
        seen = marker.read_text() == token[0]
    except OSError:
        seen = False
    views: list = [None] * env.world_size
    dist.all_gather_object(views, (seen, socket.gethostname()))
    if env.is_main:
        marker.unlink(missing_ok=True)
    blind = [f"rank {r} on {host}" for r, (ok, host) in enumerate(views) if not ok]
    if blind:
        raise OutDirNotShared(f"out_dir={out_dir} is not shared between the nodes: {', '.join(blind)} cannot see "
                              f"{marker.name} written there by rank 0 on {views[0][1]}; put out_dir on a "
                              "filesystem that every node mounts")


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
