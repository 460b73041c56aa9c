"""`drs-generate`: render a dataset (all shards, or one with `shard=I` for farm array tasks).

    drs-generate out_dir=data/synth num_sequences=1000 sequence_length=9 resolution=256 seed=0
    drs-generate -m shard='range(0,16)' hydra/launcher=slurm_cpu out_dir=... num_sequences=...

Rerunning the same command skips complete shards (their sha256 matches their manifest part) and
finishes incomplete ones from their cached sequences.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from generator.config import ConfigError, GenerateConfig, register, validate
from generator.covers import CoverError
from generator.farm import apply_plan, plan_render_device
from generator.manifest import merge_parts, shard_is_complete
from generator.pipeline import ShardRenderer, shard_sequence_ids
from generator.render_pool import RenderFailed

log = logging.getLogger("drs-generate")
register()


def generate(cfg: GenerateConfig) -> dict | None:
    """Render the shards `cfg` asks for; merge the manifest when every shard was asked for."""
    shards = [cfg.shard] if cfg.shard is not None else list(range(cfg.num_shards))
    # First line of every task's log: which shards, which job (a killed task says nothing after).
    log.info("shards %s: starting (Slurm job %s)", shards if len(shards) < 10 else f"0..{len(shards) - 1}",
             os.environ.get("SLURM_JOB_ID", "-"))
    pending = [i for i in shards if not shard_is_complete(cfg.out_dir, i)]
    skipped = len(shards) - len(pending)
    if skipped:
        log.info("%d of %d shards already complete; skipping them", skipped, len(shards))
    if pending:
        if cfg.render.device != "cpu":
            # Bind this task's GPU (SLURM_LOCALID / CUDA_VISIBLE_DEVICES) before Blender starts.
            wanted = "auto" if cfg.render.device == "auto" else "gpu"
            apply_plan(plan_render_device(wanted, "OPTIX" if cfg.render.device == "optix" else "CUDA"))
        renderer = ShardRenderer(cfg)
        total = sum(len(shard_sequence_ids(cfg, i)) for i in pending)
        start = time.perf_counter()
        try:
            with tqdm(total=total, unit="seq", disable=not cfg.progress, desc="rendering", dynamic_ncols=True) as bar:
                for index in pending:
                    part = renderer.render_shard(index, progress=bar)
                    rate = bar.n / max(time.perf_counter() - start, 1e-9) * 60
                    bar.set_postfix(shard=index, seq_per_min=f"{rate:.1f}")
                    log.info("shard %d: %d sequences, %d rejected, device %s", index, part["shard"]["count"],
                             len(part["rejected"]["sequences"]), part["device"])
        finally:
            renderer.close()
    if cfg.shard is None:
        manifest = merge_parts(cfg.out_dir, expected_shards=cfg.num_shards)
        log.info("wrote %s/manifest.json: %d sequences in %d shards", cfg.out_dir, manifest["num_sequences"], len(manifest["shards"]))
        return manifest
    return None


CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def _app(cfg: DictConfig) -> None:
    try:
        generate(validate(cfg))
    except (ConfigError, CoverError, RenderFailed) as exc:
        log.error("%s", exc)
        sys.exit(2)


def main() -> None:
    _app()


if __name__ == "__main__":
    main()
