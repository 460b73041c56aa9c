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
