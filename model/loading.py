"""Rebuild a DeepResidualSet from a checkpoint (model/checkpoint.py format, weights_only loading)."""

from __future__ import annotations

import os
from typing import Any

import torch

from model.checkpoint import CheckpointError, load_checkpoint
from model.network import DeepResidualSet, build_model


def model_from_checkpoint(
    payload_or_path: dict[str, Any] | str | os.PathLike, map_location: str | torch.device = "cpu"
) -> DeepResidualSet:
    """A checkpoint path, or a payload already loaded with load_checkpoint -> the network, in eval mode.

    Raises CheckpointError (naming the file) when the file is missing or corrupt, the architecture
    is unknown, or the weights belong to another architecture (missing / unexpected keys, shapes).
    """
    if isinstance(payload_or_path, dict):
        payload, where = payload_or_path, "checkpoint payload"
    else:
        payload, where = load_checkpoint(payload_or_path, map_location=map_location), f"checkpoint {payload_or_path}"
    arch, arch_args = payload["arch"], payload["arch_args"]
    try:
        net = build_model(arch, **dict(arch_args))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot build architecture {arch!r} with {arch_args}: {exc}") from exc
    state = payload["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: 'model' is not a state_dict")
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{where} does not match architecture {arch!r} {dict(arch_args)} (weights of another architecture?): "
            f"missing keys {_short(missing)}; unexpected keys {_short(unexpected)}; "
            f"shape mismatches {_short(wrong_shape)}"
        )
    net.load_state_dict(state)
    return net.eval()


def _short(items: list[str], limit: int = 8) -> str:
    """At most `limit` items, then a count, so the message stays readable for whole-model mismatches."""
    if not items:
        return "none"
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more
