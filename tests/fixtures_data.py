"""Tiny, learnable datasets written with the project's own shard writer (no Blender).

Each sequence is a smooth random "cover" (the target); each of its K inputs is the cover times a
smooth random shading field, plus a bright blob (a highlight) and a dark rectangle (an occluder)
at random places. A set network can learn to undo this, and the per-pixel median only partly does,
so tests can check that training beats the baseline.

Usage from any test::

    from tests.fixtures_data import make_tiny_dataset
    make_tiny_dataset(tmp_path / "ds", num_sequences=8, k=5, size=32)

or through the `tiny_dataset` fixture of tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from generator.dataset_format import (
    SequenceRecord,
    shard_entry,
    shard_path,
    write_manifest,
    write_shard,
)


def _smooth_field(rng: np.random.Generator, size: int, channels: int, cells: int) -> np.ndarray:
    """A random field bilinearly upsampled from a (cells x cells) grid: float (size, size, channels) in [0, 1]."""
    grid = rng.random((cells, cells, channels))
    coords = np.linspace(0, cells - 1, size)
    i0 = np.floor(coords).astype(int).clip(0, cells - 2)
    t = (coords - i0)[:, None]
    # separable bilinear interpolation: rows, then columns
    rows = grid[i0] * (1 - t[:, :, None]) + grid[i0 + 1] * t[:, :, None]
    out = rows[:, i0] * (1 - t[None, :, :]) + rows[:, i0 + 1] * t[None, :, :]
    return out


def make_sequence(rng: np.random.Generator, k: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sequence: inputs uint8 (K, S, S, 3), target uint8 (S, S, 3), occluder mask uint8 (K, S, S)."""
    cover = 0.15 + 0.7 * _smooth_field(rng, size, 3, cells=4)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    inputs = np.empty((k, size, size, 3), dtype=np.float64)
    occluder = np.zeros((k, size, size), dtype=np.uint8)
    for j in range(k):
        shading = 0.6 + 0.5 * _smooth_field(rng, size, 1, cells=3)
        img = cover * shading
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(0.08, 0.2) * size
        img = img + 0.9 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))[..., None]
        h, w = rng.integers(size // 6, size // 3, 2)
        y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
        img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0.0, 0.1, 3)
        occluder[j, y0 : y0 + h, x0 : x0 + w] = 1
        inputs[j] = img
    to_u8 = lambda a: np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    return to_u8(inputs), to_u8(cover), occluder


def make_tiny_dataset(
    out_dir: str | Path,
    num_sequences: int = 8,
    k: int = 5,
    size: int = 32,
    seed: int = 0,
    source: str = "synthetic",
    with_target: bool = True,
    sequences_per_shard: int = 4,
) -> Path:
    """Write DATASET/manifest.json + DATASET/shards/*.h5 exactly as the generator does. Returns out_dir."""
    out_dir = Path(out_dir)
    config = {"num_sequences": num_sequences, "sequence_length": k, "resolution": size, "fixture": "tiny"}
    entries = []
    for shard_index, first in enumerate(range(0, num_sequences, sequences_per_shard)):
        records = []
        for sid in range(first, min(first + sequences_per_shard, num_sequences)):
            inputs, target, occluder = make_sequence(np.random.default_rng([seed, sid]), k, size)
            records.append(
                SequenceRecord(
                    sequence_id=sid,
                    inputs=inputs,
                    target=target if with_target else None,
                    masks={"occluder": occluder},
                    params={"fixture": "tiny", "sequence_id": sid},
                )
            )
        path = shard_path(out_dir, shard_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_shard(
            path, records, seed=seed, config=config, generator_version="fixture", blender_version="none", source=source
        )
        entries.append(shard_entry(out_dir, path, first, len(records)))
    write_manifest(out_dir, seed=seed, config=config, shards=entries, source=source)
    return out_dir
