"""Re-render chosen shards of an existing dataset with the config recorded in it (`drs-verify --repair`).

A repaired shard must be byte-identical to the one that was lost, so nothing here takes the content
config from the user: it is read back from the dataset (a manifest part, else manifest.json) and
turned into `drs-generate` overrides. The user may add only settings that do not change the bytes
(where and how to render: `render.threads=8`, `render.device=cuda`, `hydra.launcher.partition=cpu`);
:func:`repair_config` composes conf/generate.yaml with both and refuses the result unless its
content config equals the recorded one.

Two ways to render, both through `drs-generate`'s own code path:

- locally: :func:`render_locally` calls :func:`generator.cli_generate.generate` with `shard=I` for
  each shard (a killed task's cached sequences under DATASET/.partial/ are reused);
- through a Hydra launcher: :func:`render_with_launcher` runs
  `drs-generate -m shard=I,J,... hydra/launcher=NAME ...`, one Slurm array task per shard.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from generator import __version__
from generator.config import ConfigError, GenerateConfig, register, validate
from generator.dataset_format import MANIFEST_NAME
from generator.manifest import PARTS_DIR

log = logging.getLogger("drs-verify")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class RepairError(RuntimeError):
    """The dataset cannot be re-rendered as it was; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------
# what was recorded


def recorded_provenance(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """{"config": content config, "generator_version": ..., "file": where it was read} from the
    first readable manifest part, else manifest.json. Raises RepairError when neither has one."""
    dataset_dir = Path(dataset_dir)
    candidates = sorted((dataset_dir / PARTS_DIR).glob("shard-*.json")) + [dataset_dir / MANIFEST_NAME]
    for path in candidates:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue  # a missing manifest or a damaged part: try the next record
        if isinstance(record, dict) and isinstance(record.get("config"), dict):
            return {
                "config": record["config"],
                "generator_version": record.get("generator_version"),
                "file": str(path.relative_to(dataset_dir)),
            }
    raise RepairError(
        f"{dataset_dir}: no manifest part ({PARTS_DIR}/shard-*.json) and no {MANIFEST_NAME} records "
        f"the config it was rendered with, so its shards cannot be re-rendered; render it again with "
        f"drs-generate and the original overrides"
    )


# ----------------------------------------------------------------------------------------------
# config -> overrides -> config


def _hydra_value(value: Any) -> str:
    """One value in Hydra's override grammar. Strings are quoted (paths may hold '=' or ',')."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    raise RepairError(f"cannot express {value!r} ({type(value).__name__}) as a Hydra override")


def content_overrides(content: dict[str, Any], prefix: str = "") -> list[str]:
    """A recorded content config as `key=value` overrides for drs-generate, nested keys dotted."""
    out = []
    for key, value in sorted(content.items()):
        if isinstance(value, dict):
            out += content_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={_hydra_value(value)}")
    return out


def _diff(recorded: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (for the error message)."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        return [
            d
            for k in sorted(set(recorded) | set(now))
            for d in _diff(recorded.get(k), now.get(k), f"{prefix}{k}.")
        ]
    return [] if recorded == now else [f"{prefix.rstrip('.')}: recorded {recorded!r}, now {now!r}"]


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(generator overrides, launcher overrides): the hydra.* and hydra/... ones go to the launcher."""
    launcher = [o for o in overrides if o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    return [o for o in overrides if o not in launcher], launcher


def repair_config(
    dataset_dir: str | os.PathLike, overrides: Sequence[str] = (), *, allow_version_change: bool = False
) -> GenerateConfig:
    """The GenerateConfig that re-renders `dataset_dir`'s shards byte for byte.

    Composes conf/generate.yaml (so defaults, schemas and range checks are drs-generate's) with the
    recorded content config and then `overrides`; raises RepairError when an override changes the
    content or the installed generator differs from the one that wrote the dataset.
    """
    dataset_dir = Path(dataset_dir).resolve()
    record = recorded_provenance(dataset_dir)
    recorded = record["config"]
    version = record["generator_version"]
    if version is not None and version != __version__ and not allow_version_change:
        raise RepairError(
            f"{dataset_dir / record['file']}: written by generator {version}, this is {__version__}; "
            f"re-rendered shards would differ from the others (their attrs record the version). "
            f"Install generator {version}, or pass --allow-version-change to accept that"
        )
    from hydra import compose, initialize_config_dir  # Hydra's global state: only when repairing

    register()
    generator_overrides, _ = split_overrides(overrides)
    all_overrides = [
        *content_overrides(recorded),
        f"out_dir={_hydra_value(str(dataset_dir))}",
        "shard=null",
        *generator_overrides,
    ]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="drs-verify"):
            cfg = validate(compose(config_name="generate", overrides=all_overrides))
    except ConfigError:
        raise
    except Exception as exc:  # Hydra's composition errors name the override that failed
        raise RepairError(
            f"{dataset_dir}: cannot compose drs-generate's config from the recorded one: {exc}"
        ) from exc
    cfg.allow_version_change = allow_version_change  # generate()'s dataset check accepts it then
    differences = _diff(recorded, cfg.content_config())
    if differences:
        raise RepairError(
            f"{dataset_dir}: the repair config would not reproduce the recorded shards "
            f"({record['file']}): "
            + "; ".join(differences)
            + ". Only settings outside the content config (render.device, render.threads, "
            "render.recycle_after, render.max_memory_mb, render.max_retries, render.timeout_s, "
            "scratch_dir, progress) may be overridden"
        )
    return cfg


# ----------------------------------------------------------------------------------------------
# rendering


def render_locally(cfg: GenerateConfig, indices: Sequence[int]) -> dict[int, str]:
    """Render each shard in this process with drs-generate's `generate(shard=I)`; returns
    {index: error} for the shards that failed (the others are written with their parts)."""
    from generator.cli_generate import generate  # pulls in the render worker machinery

    failed: dict[int, str] = {}
    with tqdm(indices, desc="repairing", unit="shard", disable=not cfg.progress, dynamic_ncols=True) as bar:
        for index in bar:
            bar.set_postfix(shard=index)
            try:
                generate(replace(cfg, shard=index))
            except Exception as exc:  # one shard's failure must not stop the repair of the others
                log.error("shard %d: re-render failed: %s: %s", index, type(exc).__name__, exc)
                failed[index] = f"{type(exc).__name__}: {exc}"
    return failed


def drs_generate_command() -> list[str]:
    """The drs-generate beside this interpreter (a venv's bin/), else the one on PATH, else -m."""
    beside = Path(sys.executable).parent / "drs-generate"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("drs-generate")
    return [found] if found else [sys.executable, "-m", "generator.cli_generate"]


def launcher_command(
    cfg: GenerateConfig, indices: Sequence[int], launcher: str, overrides: Sequence[str] = ()
) -> list[str]:
    """`drs-generate -m shard=I,J hydra/launcher=NAME <recorded config> <overrides>`."""
    if not indices:
        raise ValueError("no shards to render")
    shards = ",".join(str(i) for i in indices)
    return [
        *drs_generate_command(),
        "-m",
        f"shard={shards}",
        f"hydra/launcher={launcher}",
        *content_overrides(cfg.content_config()),
        f"out_dir={_hydra_value(cfg.out_dir)}",
        f"progress={_hydra_value(cfg.progress)}",
        f"allow_version_change={_hydra_value(cfg.allow_version_change)}",
        *overrides,
    ]


def render_with_launcher(
    cfg: GenerateConfig,
    indices: Sequence[int],
    launcher: str,
    overrides: Sequence[str] = (),
    *,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Run the sweep that re-renders `indices` (one launcher job each) and wait for it; returns its
    exit code. Its output streams through; each job's log lands under the sweep's directory
    (DATASET/logs/sweep-*/.submitit/ for the Slurm launchers)."""
    cmd = launcher_command(cfg, indices, launcher, overrides)
    log.info("re-rendering shards %s through hydra/launcher=%s", list(indices), launcher)
    log.info("running: %s", " ".join(cmd))
    try:
        return subprocess.run(cmd, env=env, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        log.error("the sweep did not finish within %.0f s; its jobs may still be running", timeout_s)
        return 124
