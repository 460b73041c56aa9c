"""README promises about the render worker and devices, with real (tiny) Blender renders:
recycling after `render.recycle_after` requests or past `render.max_memory_mb`, `render.max_retries`,
and `render=gpu` on a machine without a GPU (CPU with a warning, the device recorded)."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

from generator.cli_generate import generate
from generator.config import GenerateConfig, RenderConfig
from generator.dataset_format import ShardReader, read_manifest, shard_path
from generator.farm import FarmDeviceWarning
from generator.pipeline import make_worker
from generator.render_pool import RenderFailed
from generator.scene_spec import sample_sequence

pytestmark = pytest.mark.blender


def _worker(tmp_path, **render):
    cfg = GenerateConfig(out_dir=str(tmp_path / "out"), num_sequences=1, sequence_length=1, resolution=16,
                         seed=3, progress=False, render=RenderConfig(**render))
    spec = sample_sequence(0, 0, 1, 10, cfg.scene)
    request = {"sequence": spec.to_dict(), "cover": None, "albedo": 0.25, "occluder_covers": [], "frames": [0]}
    return make_worker(cfg, str(tmp_path / "scratch")), request


def test_worker_is_replaced_after_recycle_after_requests(tmp_path):
    worker, request = _worker(tmp_path, recycle_after=2)
    try:
        pids = []
        for _ in range(3):
            worker.render(request)
            pids.append(worker.pid)  # None: the worker was stopped after this request
        first = pids[0]
        assert first is not None and pids[1] is None  # served 2: recycled
        assert pids[2] is not None and pids[2] != first  # a fresh process served the third
        assert worker.restarts == 0  # recycling is not a crash
    finally:
        worker.close()


def test_worker_is_replaced_past_max_memory_mb(tmp_path, caplog):
    worker, request = _worker(tmp_path, recycle_after=1000, max_memory_mb=1)  # any Blender is above 1 MB
    try:
        with caplog.at_level(logging.INFO, logger="generator.render_pool"):
            worker.render(request)
        assert worker.pid is None
        assert "recycling render worker after 1 requests at" in caplog.text
    finally:
        worker.close()


def test_a_failing_request_is_retried_max_retries_times_then_reported(tmp_path):
    worker, request = _worker(tmp_path, max_retries=1)
    broken = {**request, "sequence": {"not": "a sequence"}}  # raises inside Blender
    try:
        with pytest.raises(RenderFailed) as err:
            worker.render(broken)
        message = str(err.value)
        assert "attempt 1: error inside Blender" in message and "attempt 2: error inside Blender" in message
        assert "attempt 3" not in message
        assert worker.restarts == 2
        assert worker.render(request)["ok"]  # and the worker still serves good requests afterwards
    finally:
        worker.close()


def test_render_gpu_without_a_gpu_renders_on_the_cpu_with_a_warning(tmp_path, monkeypatch):
    # generate() binds a GPU by exporting these before Blender starts; restore them after the test.
    for name in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    out = tmp_path / "gpu"
    cfg = GenerateConfig(out_dir=str(out), num_sequences=1, sequence_length=2, resolution=16, seed=3,
                         progress=False, render=RenderConfig(device="cuda"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate(cfg)
    assert any(issubclass(w.category, FarmDeviceWarning) for w in caught), [str(w.message) for w in caught]
    assert read_manifest(out)["devices"] == ["CPU"]
    with ShardReader(shard_path(out, 0)) as r:
        assert r.read(0).params["render"]["device"] == "CPU"


def test_joblib_launcher_sweep_renders_the_same_shards_as_one_process(tmp_path):
    """README: `drs-generate -m shard='range(0,N)' hydra/launcher=joblib hydra.launcher.n_jobs=...`."""
    import subprocess
    import sys
    from pathlib import Path

    from generator.dataset_format import sha256_file
    from generator.verify import main as verify

    common = ["num_sequences=2", "sequences_per_shard=1", "sequence_length=1", "resolution=16", "seed=8",
              "progress=false"]
    swept = tmp_path / "swept"
    run = subprocess.run([str(Path(sys.executable).parent / "drs-generate"), "-m", "shard=range(0,2)",
                          "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"out_dir={swept}", *common],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert shard_path(swept, 0).exists() and shard_path(swept, 1).exists()
    assert verify([str(swept), "--no-progress"]) == 0  # the parts merge into a whole dataset
    whole = tmp_path / "whole"
    generate(GenerateConfig(out_dir=str(whole), num_sequences=2, sequences_per_shard=1, sequence_length=1,
                            resolution=16, seed=8, progress=False))
    for i in range(2):
        assert sha256_file(shard_path(swept, i)) == sha256_file(shard_path(whole, i))


@pytest.fixture(scope="module")
def paired_renders(tmp_path_factory):
    """Real 48 px renders of 3 sequences x 4 frames, each also rendered with its occluders taken out
    (nothing casts a shadow there): [(masks, visible, light kept by the cover, glossy light)].
    The masks are frame_masks' (generator/composite.py); the other three come from the renders, not
    from the passes and estimates the masks use."""
    import copy

    import numpy as np

    from generator.composite import frame_masks

    tmp = tmp_path_factory.mktemp("paired")
    worker, _ = _worker(tmp)
    worker.settings["resolution"] = 48
    scene = GenerateConfig(out_dir=str(tmp)).scene
    frames = []
    try:
        for sid in range(3):
            spec = sample_sequence(3, sid, 4, 10, scene).to_dict()
            bare = copy.deepcopy(spec)
            for frame in bare["frames"]:
                frame["occluders"] = []
            request = {"cover": None, "albedo": 0.25, "occluder_covers": [], "frames": list(range(4))}
            with_occ = worker.render({**request, "sequence": spec})["frames"]
            without = worker.render({**request, "sequence": bare})["frames"]
            for j, (p, q) in enumerate(zip(with_occ, without, strict=True)):
                visible = p["plane"] >= 0.5
                light = p["diffuse_light"].sum(-1) / np.maximum(q["diffuse_light"].sum(-1), 1e-9)
                glossy = (q["image"] - q["diffuse_color"] * q["diffuse_light"]).max(-1)
                fr = spec["frames"][j]
                frames.append((frame_masks(p, fr["lights"], fr["ambient"]), visible, light, glossy))
    finally:
        worker.close()
    return frames


def test_specular_mask_marks_glossy_reflection_above_15_percent_of_white(paired_renders):
    checked = 0
    for masks, visible, _, glossy in paired_renders:
        specular = masks.specular.astype(bool) & visible
        if specular.any():  # marked pixels do reflect glossily (0.1: tolerance for render noise)
            assert (glossy[specular] > 0.1).mean() > 0.85
        strong = visible & (glossy > 0.2)
        if strong.sum() >= 10:  # and clear glossy reflections are marked
            assert specular[strong].mean() > 0.8
            checked += 1
    assert checked >= 3


def test_shadow_mask_marks_pixels_that_lost_most_of_their_light(paired_renders):
    checked = 0
    for masks, visible, light, _ in paired_renders:
        dark = visible & (light < 0.4)
        if dark.sum() >= 10:
            assert masks.shadow.astype(bool)[dark].mean() > 0.8
            checked += 1
    assert checked >= 2


def test_shadow_mask_marks_no_fully_lit_pixel(paired_renders):
    # Was a strict xfail: the unshadowed level came from the frame's 90th percentile of light over an
    # analytic model without the world's fill, so a frame with strong fill and one grazing lamp
    # (sequence 1 frame 1: ~1300 of ~2300 pixels) was marked shadowed where it kept all its light.
    for masks, visible, light, _ in paired_renders:
        shadow = masks.shadow.astype(bool) & visible
        assert (light[shadow] > 0.9).sum() <= max(10, 0.05 * shadow.sum())
