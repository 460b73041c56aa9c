"""`drs-generate`: render a dataset (all shards, or one with `shard=I` for farm array tasks).

    drs-generate out_dir=data/synth num_sequences=1000 sequence_length=9 resolution=256 seed=0
    drs-generate -m shard='range(0,16)' hydra/launcher=slurm_cpu out_dir=... num_sequences=...

Rerunning the same command skips complete shards (their sha256 matches their manifest part) and
finishes incomplete ones from their cached sequences. A run with another config into the same
out_dir is refused (generator/dataset_guard.py); `overwrite=true` replaces that dataset.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from generator.config import ConfigError, GenerateConfig, register, validate
from generator.covers import CoverError, FolderCovers, open_covers
from generator.dataset_format import (
    SHARD_DIR,
    UserError,
    command_line_value,
    out_dir_problem,
    run_command,
    shard_path,
)
from generator.dataset_guard import CACHE_DIR, check_plan, claim, remove_temporaries, shard_lock
from generator.farm import apply_plan, plan_render_device
from generator.manifest import merge_parts, part_path, shard_is_complete
from generator.pipeline import ShardRenderer, shard_sequence_ids
from generator.render_pool import RenderFailed

log = logging.getLogger("drs-generate")
register()


def generate(cfg: GenerateConfig) -> dict | None:
    """Render the shards `cfg` asks for; merge the manifest when every shard was asked for.

    Shards are visited lazily (never a list of all of them), each under its own lock.
    """
    if cfg.shard is None:
        shards, requested = range(cfg.num_shards), cfg.num_sequences
    else:
        shards, requested = range(cfg.shard, cfg.shard + 1), len(shard_sequence_ids(cfg, cfg.shard))
    # First line of every task's log: which shards, which job (a killed task says nothing after).
    log.info("shards %s: starting (Slurm job %s)", list(shards) if len(shards) < 10 else f"0..{len(shards) - 1}",
             os.environ.get("SLURM_JOB_ID", "-"))
    # Nothing is written before the plan, the covers and the out_dir have been checked.
    log.info("plan: %s", check_plan(cfg, requested))
    covers = open_covers(cfg.covers.dir, cfg.seed)
    if isinstance(covers, FolderCovers):
        covers.get(0, 8)  # CoverError now, if not one file is usable, rather than after claiming out_dir
    claim(cfg)
    renderer: ShardRenderer | None = None
    skipped = 0
    start = time.perf_counter()
    try:
        with tqdm(total=requested, unit="seq", disable=not cfg.progress, desc="rendering", dynamic_ncols=True) as bar:
            for index in shards:
                if shard_is_complete(cfg.out_dir, index):
                    skipped += 1
                    bar.update(len(shard_sequence_ids(cfg, index)))
                    continue
                with shard_lock(cfg.out_dir, index):
                    if shard_is_complete(cfg.out_dir, index):  # finished by another run meanwhile
                        skipped += 1
                        bar.update(len(shard_sequence_ids(cfg, index)))
                        continue
                    for path in (shard_path(cfg.out_dir, index), part_path(cfg.out_dir, index)):
                        remove_temporaries(path.parent, path.name)  # a killed writer's
                    renderer = renderer or _start_renderer(cfg, covers)
                    part = renderer.render_shard(index, progress=bar)
                rate = bar.n / max(time.perf_counter() - start, 1e-9) * 60
                bar.set_postfix(shard=index, seq_per_min=f"{rate:.1f}")
                log.info("shard %d: %d sequences, %d rejected, device %s", index, part["shard"]["count"],
                         len(part["rejected"]["sequences"]), part["device"])
    except BaseException:
        if renderer is not None and renderer.worker.pid is not None:
            # Interrupted or failed: stop Blender now rather than after its current image.
            with contextlib.suppress(ProcessLookupError):
                os.kill(renderer.worker.pid, signal.SIGKILL)
        raise
    finally:
        if renderer is not None:
            renderer.close()
    if skipped:
        log.info("%d of %d shards were already complete; skipped them", skipped, len(shards))
    if cfg.shard is None:
        manifest = merge_parts(cfg.out_dir, expected_shards=cfg.num_shards)
        log.info("wrote %s/manifest.json: %d sequences in %d shards", cfg.out_dir, manifest["num_sequences"], len(manifest["shards"]))
        return manifest
    return None


def _start_renderer(cfg: GenerateConfig, covers) -> ShardRenderer:
    if cfg.render.device != "cpu":
        # Bind this task's GPU (SLURM_LOCALID / CUDA_VISIBLE_DEVICES) before Blender starts.
        wanted = "auto" if cfg.render.device == "auto" else "gpu"
        apply_plan(plan_render_device(wanted, "OPTIX" if cfg.render.device == "optix" else "CUDA"))
    return ShardRenderer(cfg, covers)


def kept_on_disk(out_dir: str | os.PathLike) -> str:
    """What an interrupted run leaves for the next one, for the Ctrl-C message."""
    out = Path(out_dir)
    shards = sum(1 for _ in (out / SHARD_DIR).glob("shard-*.h5"))
    cached = sum(1 for _ in (out / CACHE_DIR).glob("*/shard-*/seq-*.npz"))
    return (f"kept {shards} complete shard(s) in {out / SHARD_DIR} and {cached} finished sequence(s) "
            f"cached under {out / CACHE_DIR}; rerun the same command to resume")


CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
_out_dir_existed = True  # set by main(): did out_dir exist before Hydra made its log folder in it?


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def _app(cfg: DictConfig) -> None:
    code = run_command("drs-generate", lambda: _run(cfg), user_errors=(ConfigError, CoverError, RenderFailed),
                       on_interrupt=lambda: kept_on_disk(cfg.out_dir))
    if code:
        if HydraConfig.get().mode == RunMode.RUN and not _out_dir_existed:
            _remove_skeleton(Path(cfg.out_dir), Path(HydraConfig.get().runtime.output_dir))
        sys.exit(code)


def _run(cfg: DictConfig) -> None:
    missing = unset_required_keys(cfg)
    if missing:
        raise UserError(f"{', '.join(missing)}: required by the chosen config groups but not given "
                        f"(e.g. covers=folder needs covers.dir=/path/to/covers)")
    generate(validate(cfg))


def unset_required_keys(cfg: DictConfig) -> list[str]:
    """Keys a chosen group file marks `???` that are still unset. Merging `???` over a schema
    default keeps the default, so `covers=folder` without covers.dir would otherwise compose to
    the schema's None, i.e. procedural covers; the group files are read back to find such keys."""
    missing = set(OmegaConf.missing_keys(cfg))
    for group, choice in HydraConfig.get().runtime.choices.items():
        path = Path(CONF_DIR) / group / f"{choice}.yaml"
        if group.startswith("hydra") or not isinstance(choice, str) or not path.is_file():
            continue
        package = "" if "@package _global_" in path.read_text() else group.replace("/", ".") + "."
        for key in OmegaConf.missing_keys(OmegaConf.load(path)):
            if OmegaConf.select(cfg, package + key) is None:
                missing.add(package + key)
    return sorted(missing)


def _remove_skeleton(out_dir: Path, run_dir: Path) -> None:
    """A run that failed before writing any data leaves no out_dir behind that it created itself
    (only Hydra's log folder would be in it)."""
    logs = out_dir / "logs"
    if not logs.is_dir() or run_dir.parent != logs:
        return  # Hydra's run folder is elsewhere (hydra.run.dir=...): there is no skeleton
    if {p.name for p in out_dir.iterdir()} <= {"logs"} and \
            {p.name for p in logs.iterdir()} <= {run_dir.name} | {p.name for p in logs.glob("blender-*.log")}:
        shutil.rmtree(out_dir, ignore_errors=True)


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    global _out_dir_existed
    out_dir = command_line_value(sys.argv[1:], "out_dir", str(OmegaConf.load(Path(CONF_DIR) / "generate.yaml").out_dir))
    _out_dir_existed = out_dir is None or Path(out_dir).exists()
    problem = out_dir_problem(out_dir)
    if problem:
        print(f"drs-generate: error: {problem}", file=sys.stderr)
        sys.exit(2)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        # `kill PID` then stops like Ctrl-C: Blender stopped, scratch folder removed, what was kept
        # said. (Under submitit, which handles SIGTERM itself for requeueing, main() never runs.)
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        _app()
    except KeyboardInterrupt:  # while Hydra composes the config, before any of our code
        print("drs-generate: interrupted before rendering started; nothing was written", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
