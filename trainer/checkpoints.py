"""Training-state checkpoints on top of model/checkpoint.py: save, rotate, resume, fine-tune init.

Layout in out_dir/checkpoints/:
    step-00001000.pt ...   the last `keep_last` periodic checkpoints (and the final one)
    best.pt                the one with the highest validation PSNR so far

Every file is a GUIDE section 3 checkpoint (plain tensors and values, written atomically), so any
of them also feeds drs-evaluate, drs-restore and `init_from`.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.network import complete_arch_args

log = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_path(out_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(out_dir) / f"step-{step:08d}.pt"


def step_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the periodic checkpoints in out_dir, oldest first."""
    d = checkpoint_dir(out_dir)
    found = [(int(m.group(1)), p) for p in d.glob("step-*.pt") if (m := _STEP_RE.match(p.name))]
    return sorted(found)


def rng_state() -> dict[str, Any]:
    """Every RNG the loop could touch, as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(
    path: Path,
    *,
    net: nn.Module,
    step: int,
    optimizer: torch.optim.Optimizer,
    config: dict,
    extra: dict,
) -> Path:
    return save_checkpoint(
        path,
        model_state=net.state_dict(),
        arch=net.arch,
        arch_args=net.arch_args,
        step=step,
        optimizer=optimizer.state_dict(),
        config=config,
        rng=rng_state(),
        extra=extra,
    )


def prune(out_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints (best.pt is separate and kept)."""
    for _, path in step_checkpoints(out_dir)[:-keep_last]:
        path.unlink(missing_ok=True)


def latest_resumable(out_dir: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest step checkpoint that loads, or None. A broken newest file (which atomic writes
    should prevent) is reported and the one before it is used."""
    for _step, path in reversed(step_checkpoints(out_dir)):
        try:
            payload = load_checkpoint(path, map_location=map_location)
        except CheckpointError as exc:
            log.warning("cannot resume from %s (%s); trying an older checkpoint", path, exc)
            continue
        payload["_path"] = str(path)
        return payload
    return None


def init_weights_from(net: nn.Module, path: str | Path) -> None:
    """Load a (pretrained) checkpoint's weights into `net` for fine-tuning.

    The checkpoint must be of the same architecture (name and arguments) and its keys must match
    the model's exactly: the error lists the missing and unexpected keys, so a checkpoint of
    another network cannot half-load silently.
    """
    payload = load_checkpoint(path)
    theirs = complete_arch_args(payload["arch"], payload["arch_args"])
    if payload["arch"] != net.arch or theirs != dict(net.arch_args):
        diff = {k: (theirs.get(k), net.arch_args.get(k))
                for k in set(theirs) | set(net.arch_args)
                if theirs.get(k) != net.arch_args.get(k)}
        raise CheckpointError(
            f"init_from={path}: checkpoint is architecture {payload['arch']!r}, the config builds {net.arch!r}; "
            f"differing arguments (checkpoint, config): {diff}. Choose the matching model=... / model.aggregation=..."
        )
    state = payload["model"]
    own = net.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"init_from={path}: missing keys {missing}; unexpected keys {unexpected}")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"init_from={path}: {exc}") from exc
    log.info("initialised weights from %s (step %d)", path, payload["step"])
