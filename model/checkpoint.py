"""Checkpoint files (GUIDE section 3): plain tensors and plain Python values only.

A checkpoint is a dict::

    format_version  int
    arch            str             builder name, e.g. "drs_small"
    arch_args       dict            keyword arguments that rebuild the exact architecture
    model           state_dict      tensors only
    step            int
    optimizer       dict | None     optimizer.state_dict()
    config          dict | None     resolved config as plain containers
    rng             dict | None     RNG states as tensors / plain values
    extra           dict | None     anything else plain (metrics, EMA state_dict, ...)

It is written atomically (temporary file, fsync, rename) and read with weights_only=True, so
loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "arch", "arch_args", "model")


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt, or of another architecture; the message says which."""


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model_state: dict[str, torch.Tensor],
    arch: str,
    arch_args: dict[str, Any],
    step: int = 0,
    optimizer: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    payload = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_args": dict(arch_args),
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "step": int(step),
        "optimizer": optimizer,
        "config": config,
        "rng": rng,
        "extra": extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a shared run's checkpoints must be readable
    # Serialise in memory first: torch.save on a full disk reports only "unexpected pos ...", while
    # a plain write names the real cause (No space left on device) and the file.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        with os.fdopen(fd, "wb") as fh:
            try:
                fh.write(buffer.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check a checkpoint; every failure is a CheckpointError naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, pickled objects: all rejected here
        # Only the first line of PyTorch's message: the rest advises weights_only=False, which would
        # run whatever code the file holds and must never be suggested.
        reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        if "weights_only" in reason or "Weights only load failed" in reason:
            reason = "not a PyTorch file, or one holding Python objects besides tensors"
        raise CheckpointError(f"checkpoint {path} is corrupt or not a plain-tensor drs checkpoint ({reason})") from exc
    if not isinstance(payload, dict) or any(k not in payload for k in REQUIRED_KEYS):
        raise CheckpointError(f"checkpoint {path} lacks the keys {REQUIRED_KEYS}; not a drs checkpoint")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format_version {payload['format_version']}, expected {FORMAT_VERSION}")
    return payload
