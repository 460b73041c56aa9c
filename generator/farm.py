"""Which device a render task uses on a farm node, decided before Blender starts.

A Slurm task that asked for GPUs finds them in ``CUDA_VISIBLE_DEVICES`` (Slurm sets it to the
GPUs allocated to the job); when several tasks share a node, ``SLURM_LOCALID`` says which of them
this task is. :func:`plan_render_device` turns that environment into a :class:`DevicePlan`:
the ``CUDA_VISIBLE_DEVICES`` value that leaves this task exactly one GPU, what to enable in Cycles,
and how many CPU threads to use. :func:`apply_plan` puts it into ``os.environ`` so the render
worker process, spawned afterwards, inherits it: CUDA reads ``CUDA_VISIBLE_DEVICES`` once, when
it initialises, so setting it inside a running Blender is too late.

No GPU where one was wanted gives a CPU plan and a warning, never a failure: a farm of mixed nodes
still finishes, and the log says which shards rendered on the CPU. This module imports neither
bpy nor torch (GUIDE section 2); ``blender_scenes/`` applies ``plan.cycles_device`` and
``plan.compute_device_type`` and logs the device Cycles actually reports.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "gpu")
# Cycles' GPU back ends that CUDA_VISIBLE_DEVICES governs (HIP/Metal/oneAPI use other variables).
CUDA_BACKENDS = ("CUDA", "OPTIX")
# Values meaning "no GPU for you": unset-but-present, CUDA's "hide all", Slurm's "no gres".
_NO_GPU_VALUES = {"", "-1", "none", "nodevfiles", "void"}


class FarmDeviceWarning(UserWarning):
    """A task wanted a GPU but will render on the CPU; the message says why."""


@dataclass(frozen=True)
class DevicePlan:
    """What a render task enables, decided from its environment.

    cycles_device: "GPU" or "CPU" (Cycles' scene.cycles.device).
    compute_device_type: "CUDA"/"OPTIX" for a GPU plan, "NONE" for a CPU plan
        (Cycles' preferences compute_device_type).
    cuda_visible_devices: the value to export before Blender starts (one entry: the index, UUID or
        MIG id as the job saw it), or None to leave the variable alone.
    threads: CPU threads for Cycles (0 would mean "all cores of the node", which oversubscribes a
        shared node, so this is always >= 1).
    reason: one human sentence for the log, e.g. "GPU 2 of 0,1,2,3 (SLURM_LOCALID=2)".
    """

    cycles_device: str
    compute_device_type: str
    cuda_visible_devices: str | None
    threads: int
    reason: str

    @property
    def uses_gpu(self) -> bool:
        return self.cycles_device == "GPU"


def visible_gpus(
    env: Mapping[str, str], proc_root: str | os.PathLike = "/proc/driver/nvidia/gpus"
) -> list[str]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES entries if set, else the driver's list.

    Returns ids as strings ("0", "3", "GPU-8f1c...", "MIG-..."); [] when there is no GPU.
    """
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        if raw.strip().lower() in _NO_GPU_VALUES:
            return []
        return [item.strip() for item in raw.split(",") if item.strip()]
    # No variable: every GPU the NVIDIA driver shows (one directory per GPU, by PCI address).
    root = Path(proc_root)
    count = len([p for p in root.iterdir() if p.is_dir()]) if root.is_dir() else 0
    return [str(i) for i in range(count)]


def cpu_threads(env: Mapping[str, str]) -> int:
    """CPU threads the task owns: SLURM_CPUS_PER_TASK, else the CPUs this process may run on."""
    value = env.get("SLURM_CPUS_PER_TASK", "")
    if re.fullmatch(r"\d+", value.strip()) and int(value) > 0:
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def plan_render_device(
    device: str = "auto",
    backend: str = "CUDA",
    env: Mapping[str, str] | None = None,
    proc_root: str | os.PathLike = "/proc/driver/nvidia/gpus",
) -> DevicePlan:
    """Decide the render device for this task.

    device: "cpu" (never a GPU), "gpu" (a GPU, or the CPU with a FarmDeviceWarning when none is
        visible), "auto" (a GPU when one is visible, else the CPU without a warning).
    backend: Cycles GPU back end, "CUDA" or "OPTIX".
    env: the environment to read (default os.environ); SLURM_LOCALID picks among several GPUs.
    """
    if device not in DEVICE_CHOICES:
        raise ValueError(f"render device must be one of {DEVICE_CHOICES}, got {device!r}")
    backend = backend.upper()
    if backend not in CUDA_BACKENDS:
        raise ValueError(f"render backend must be one of {CUDA_BACKENDS}, got {backend!r}")
    env = os.environ if env is None else env
    threads = cpu_threads(env)
    if device == "cpu":
        return DevicePlan("CPU", "NONE", None, threads, f"CPU by request, {threads} threads")

    gpus = visible_gpus(env, proc_root)
    if not gpus:
        why = _why_no_gpu(env)
        if device == "gpu":
            warnings.warn(
                f"GPU rendering requested but {why}; rendering on the CPU", FarmDeviceWarning, stacklevel=2
            )
        return DevicePlan("CPU", "NONE", None, threads, f"CPU ({why}), {threads} threads")

    local_id = _int_or_none(env.get("SLURM_LOCALID"))
    # Several tasks of one job on a node share its GPUs round-robin; a lone task takes the first.
    index = (local_id or 0) % len(gpus)
    chosen = gpus[index]
    picked_by = f"SLURM_LOCALID={local_id}" if local_id is not None else "first visible"
    reason = f"{backend} GPU {chosen} of {','.join(gpus)} ({picked_by}), {threads} CPU threads"
    return DevicePlan("GPU", backend, chosen, threads, reason)


def apply_plan(plan: DevicePlan, env: MutableMapping[str, str] | None = None) -> None:
    """Export the plan for processes started afterwards (the Blender render worker).

    A GPU plan narrows CUDA_VISIBLE_DEVICES to the one chosen GPU, so inside Blender it is device 0.
    A CPU plan hides every GPU, so nothing in the worker initialises CUDA by accident.
    """
    env = os.environ if env is None else env
    env["CUDA_VISIBLE_DEVICES"] = plan.cuda_visible_devices if plan.uses_gpu else ""
    # Libraries below Cycles (OpenMP, MKL, OpenImageIO) size their pools from these, not from Slurm.
    env["OMP_NUM_THREADS"] = str(plan.threads)
    log.info("render device: %s", plan.reason)


def _why_no_gpu(env: Mapping[str, str]) -> str:
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        return f"CUDA_VISIBLE_DEVICES={raw!r} allows none"
    return "no NVIDIA GPU is visible (no /proc/driver/nvidia/gpus entries, CUDA_VISIBLE_DEVICES unset)"


def _int_or_none(value: str | None) -> int | None:
    if value is None or not re.fullmatch(r"\s*\d+\s*", value):
        return None
    return int(value)
