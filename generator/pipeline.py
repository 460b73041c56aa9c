"""Render one shard: sample specs, render in the worker, composite, QA, cache, write, record.

Crash safety: every finished sequence is cached on its own (atomic .npz) under
`DATASET/.partial/<fingerprint>/shard-NNNNN/`; a rerun loads those and renders only what is missing, then writes
the shard in one go from the same arrays, so the result is byte-identical to an uninterrupted run.
The shard file and its manifest part appear only once complete (temporary name, then rename).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from generator import __version__
from generator.camera import photograph
from generator.composite import composite_cover, frame_masks, linear_to_srgb_u8, qa_problem, srgb_to_linear
from generator.config import GenerateConfig
from generator.covers import FolderCovers, ProceduralCovers, open_covers
from generator.dataset_format import (
    SequenceRecord,
    atomic_path,
    shard_entry,
    shard_path,
    write_json_atomic,
    write_shard,
)
from generator.dataset_guard import CACHE_DIR, identity, make_scratch
from generator.manifest import part_path
from generator.render_pool import RenderWorker
from generator.scene_spec import CAMERA_FOV, CAMERA_HEIGHT, SequenceSpec, sample_sequence

log = logging.getLogger(__name__)
OCCLUDER_TEXTURE_SIZE = 64


class SequenceRejected(Exception):
    pass


@dataclass
class ShardStats:
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    rejected_frames: list[dict[str, Any]] = field(default_factory=list)
    rejected_sequences: list[dict[str, Any]] = field(default_factory=list)


def shard_sequence_ids(cfg: GenerateConfig, index: int) -> range:
    first = index * cfg.sequences_per_shard
    return range(first, min(first + cfg.sequences_per_shard, cfg.num_sequences))


def cache_dir(cfg: GenerateConfig, index: int) -> Path:
    """Where shard `index`'s finished sequences wait; keyed by the config's fingerprint, so a cache
    left by a run of another config is never read (generator/dataset_guard.py)."""
    return Path(cfg.out_dir) / CACHE_DIR / identity(cfg)["fingerprint"] / f"shard-{index:05d}"


def worker_settings(cfg: GenerateConfig, scratch: str, log_path: str | None) -> dict[str, Any]:
    reference = cfg.render.quality == "reference"
    return {
        "resolution": cfg.resolution,
        "camera_height": CAMERA_HEIGHT,
        "camera_fov": CAMERA_FOV,
        "threads": cfg.render.threads,
        "samples": cfg.render.reference_samples if reference else cfg.render.samples,
        "max_bounces": cfg.render.max_bounces,
        "denoise": cfg.render.denoise and not reference,  # the reference is a plain path trace
        "adaptive_threshold": cfg.render.adaptive_threshold,
        "device": cfg.render.device,
        "scratch": scratch,
        "log_path": log_path,
    }


def make_worker(cfg: GenerateConfig, scratch: str, log_path: str | None = None) -> RenderWorker:
    r = cfg.render
    return RenderWorker(worker_settings(cfg, scratch, log_path), recycle_after=r.recycle_after,
                        max_memory_mb=r.max_memory_mb, timeout_s=r.timeout_s, max_retries=r.max_retries)




class ShardRenderer:
    """Renders the shards of one config with one (recycled) worker."""

    def __init__(self, cfg: GenerateConfig, covers: FolderCovers | ProceduralCovers | None = None):
        self.cfg = cfg
        self.covers: FolderCovers | ProceduralCovers = covers or open_covers(cfg.covers.dir, cfg.seed)
        self._scratch = cfg.scratch_dir or make_scratch()
        try:
            logs = Path(cfg.out_dir) / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            self.worker = make_worker(cfg, self._scratch, str(logs / f"blender-{os.getpid()}.log"))
        except BaseException:
            self._remove_scratch()
            raise
        self._cover_cache: dict[tuple[int, int], np.ndarray] = {}

    def close(self) -> None:
        try:
            self.worker.close()
        finally:
            self._remove_scratch()

    def _remove_scratch(self) -> None:
        if not self.cfg.scratch_dir:  # a folder the user named is theirs to keep
            shutil.rmtree(self._scratch, ignore_errors=True)

    # -- covers ----------------------------------------------------------------------------------

    def cover(self, index: int, size: int) -> np.ndarray:
        key = (index, size)
        if key not in self._cover_cache:
            if len(self._cover_cache) > 256:
                self._cover_cache.clear()
            self._cover_cache[key] = self.covers.get(index, size)
        return self._cover_cache[key]

    def occluder_textures(self, spec: SequenceSpec) -> list[np.ndarray]:
        return [srgb_to_linear(self.cover(i, OCCLUDER_TEXTURE_SIZE) / 255.0) for i in spec.occluder_covers]

    # -- one shard -------------------------------------------------------------------------------

    def render_shard(self, index: int, progress: tqdm | None = None) -> dict[str, Any]:
        cfg = self.cfg
        ids = shard_sequence_ids(cfg, index)
        cache = cache_dir(cfg, index)
        cache.mkdir(parents=True, exist_ok=True)
        stats = ShardStats()
        done = {sid: _load_cached(cache, sid) for sid in ids if _cached_path(cache, sid).exists()}
        if progress is not None:
            progress.update(len(done))
        todo = [sid for sid in ids if sid not in done]
        for group_ids in _by_lighting_group(todo, cfg.render.covers_per_lighting if cfg.render.quality == "fast" else 1):
            for sid, outcome in self._render_group(group_ids, stats).items():
                _save_cached(cache, sid, outcome)
                done[sid] = outcome
                if progress is not None:
                    progress.update(1)
        return self._write(index, ids, done, stats)

    def _render_group(self, ids: list[int], stats: ShardStats) -> dict[int, dict[str, Any]]:
        """Sequences of one lighting group; in fast mode they share one lighting render."""
        cfg = self.cfg
        results = {}
        group_lighting = None  # attempt 0's render, shared by the group even after a retry
        for sid in ids:
            for attempt in range(cfg.render.qa_attempts):
                # The reference mode draws the very same scenes (same grouping) so the two modes
                # can be compared sequence by sequence; it just renders each one on its own.
                spec = sample_sequence(cfg.seed, sid, cfg.sequence_length, len(self.covers), cfg.scene,
                                       cfg.render.covers_per_lighting, attempt)
                if attempt > 0:  # a re-drawn lighting belongs to that one sequence, not its group
                    lighting = self._render(spec, stats)
                else:
                    if group_lighting is None:
                        group_lighting = self._render(spec, stats)
                    lighting = group_lighting
                try:
                    results[sid] = self._finish(spec, lighting, stats)
                    break
                except SequenceRejected as exc:
                    stats.rejected_frames.append({"sequence_id": sid, "attempt": attempt, "reason": str(exc)})
            else:
                reason = f"failed QA on {cfg.render.qa_attempts} attempts: {stats.rejected_frames[-1]['reason']}"
                stats.rejected_sequences.append({"sequence_id": sid, "reason": reason})
                results[sid] = {"rejected": reason}
        return results

    def _render(self, spec: SequenceSpec, stats: ShardStats) -> dict[str, Any]:
        cfg = self.cfg
        reference = cfg.render.quality == "reference"
        cover = srgb_to_linear(self.cover(spec.cover_index, cfg.resolution) / 255.0) if reference else None
        reply = self.worker.render({
            "sequence": spec.to_dict(),
            "cover": cover,
            "albedo": 1.0 if reference else cfg.render.grey_albedo,
            "occluder_covers": self.occluder_textures(spec),
            "frames": list(range(cfg.sequence_length)),
            "seed_salt": cfg.render.seed_salt,
        })
        for stage, seconds in reply["timings"].items():
            stats.timings[stage] += seconds
        return reply

    def _finish(self, spec: SequenceSpec, lighting: dict[str, Any], stats: ShardStats) -> dict[str, Any]:
        """Composite the sequence's cover into the lighting, encode, mask, QA."""
        cfg = self.cfg
        t0 = time.perf_counter()
        target = self.cover(spec.cover_index, cfg.resolution)
        cover_linear = srgb_to_linear(target / 255.0)
        reference = cfg.render.quality == "reference"
        linear = [p["image"] if reference else composite_cover(p, cover_linear, cfg.render.grey_albedo) for p in lighting["frames"]]
        t1 = time.perf_counter()
        rendered = np.stack([linear_to_srgb_u8(x) for x in linear])
        inputs, camera = rendered, None
        if cfg.camera.enabled:  # phone effects on the inputs only; QA judges the render itself
            inputs, camera = photograph(linear, cfg.camera, cfg.seed, spec.sequence_id, spec.attempt)
        spec_dict = spec.to_dict()
        frames = spec_dict["frames"]
        masks = [frame_masks(p, frames[j]["lights"], frames[j]["ambient"]) for j, p in enumerate(lighting["frames"])]
        stats.timings["composite"] += t1 - t0
        stats.timings["encode"] += time.perf_counter() - t1
        for j, (lin, srgb) in enumerate(zip(linear, rendered, strict=True)):
            problem = qa_problem(lin, srgb)
            if problem:
                raise SequenceRejected(f"frame {j}: {problem}")
        params = {
            "spec": spec_dict,
            "cover": self._cover_name(spec.cover_index),
            "render": {"quality": cfg.render.quality, "device": self.worker.device},
        }
        if camera is not None:
            params["camera"] = camera
        return {
            "inputs": inputs,
            "target": target,
            "masks": {name: np.stack([getattr(m, name) for m in masks]) for name in ("occluder", "shadow", "specular")},
            "params": params,
            "blender_version": self.worker.blender_version,
        }

    def _cover_name(self, index: int) -> str:
        if isinstance(self.covers, FolderCovers):
            return str(self.covers.files[index % len(self.covers)].relative_to(self.covers.directory))
        return f"procedural:{self.cfg.seed}:{index}"

    def _write(self, index: int, ids: list[int], done: dict[int, dict[str, Any]], stats: ShardStats) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        records = [SequenceRecord(sid, d["inputs"], d["target"], d["masks"], d["params"]) for sid, d in sorted(done.items()) if "rejected" not in d]
        for sid, d in sorted(done.items()):
            if "rejected" in d and not any(r["sequence_id"] == sid for r in stats.rejected_sequences):
                stats.rejected_sequences.append({"sequence_id": sid, "reason": d["rejected"]})
        if not records:
            raise RuntimeError(f"shard {index}: every sequence was rejected by QA ({stats.rejected_sequences[:3]} ...)")
        blender_version = next(d["blender_version"] for d in done.values() if "rejected" not in d)
        path = write_shard(shard_path(cfg.out_dir, index), records, seed=cfg.seed, config=cfg.content_config(),
                           generator_version=__version__, blender_version=blender_version)
        stats.timings["write"] += time.perf_counter() - t0
        part = {
            "shard_index": index,
            "seed": cfg.seed,
            "config": cfg.content_config(),
            "generator_version": __version__,
            "blender_version": blender_version,
            "device": self.worker.device or "cached",
            "shard": shard_entry(cfg.out_dir, path, ids[0], len(records)),
            "rejected": {
                "covers": [{"file": f, "reason": r} for f, r in sorted(self.covers.rejected.items())],
                "frames": stats.rejected_frames,
                "sequences": stats.rejected_sequences,
            },
            "timings": {k: round(v, 4) for k, v in stats.timings.items()},
        }
        write_json_atomic(part_path(cfg.out_dir, index), part)
        cache = cache_dir(cfg, index)
        shutil.rmtree(cache, ignore_errors=True)
        for folder in (cache.parent, cache.parent.parent):
            try:
                folder.rmdir()  # only succeeds once no shard is in progress
            except OSError:
                break
        return part


def _by_lighting_group(ids: list[int], per_group: int) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for sid in ids:
        groups.setdefault(sid // per_group, []).append(sid)
    return [groups[g] for g in sorted(groups)]


def _cached_path(cache: Path, sid: int) -> Path:
    return cache / f"seq-{sid:09d}.npz"


def _save_cached(cache: Path, sid: int, outcome: dict[str, Any]) -> None:
    meta = {k: outcome[k] for k in ("params", "blender_version", "rejected") if k in outcome}
    arrays = {}
    if "rejected" not in outcome:
        arrays = {"inputs": outcome["inputs"], "target": outcome["target"],
                  **{f"mask_{k}": v for k, v in outcome["masks"].items()}}
    # Zipped in memory, then written: savez failing on a full disk half-way leaves a ZipFile that
    # prints a traceback when it is collected; a plain write fails with a clean OSError.
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    with atomic_path(_cached_path(cache, sid)) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def _load_cached(cache: Path, sid: int) -> dict[str, Any]:
    with np.load(_cached_path(cache, sid)) as data:
        meta = json.loads(str(data["meta"]))
        if "rejected" in meta:
            return meta
        return {
            "inputs": data["inputs"],
            "target": data["target"],
            "masks": {k[5:]: data[k] for k in data.files if k.startswith("mask_")},
            **meta,
        }
