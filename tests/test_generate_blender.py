"""drs-generate with real (tiny) Blender renders: determinism, sharding, resume, alignment, masks."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from skimage.registration import phase_cross_correlation

from generator.cli_generate import generate
from generator.config import GenerateConfig, RenderConfig, SceneConfig
from generator.dataset_format import ShardReader, read_manifest, sha256_file, shard_path, validate_shard
from generator.manifest import merge_parts
from generator.pipeline import ShardRenderer, ShardStats, cache_dir, make_worker
from generator.render_pool import RenderWorker

pytestmark = pytest.mark.blender
BIN = Path(sys.executable).parent
BASE = dict(num_sequences=4, sequence_length=3, resolution=32, seed=5, progress=False)


def _cfg(out_dir: Path, **kw) -> GenerateConfig:
    render = kw.pop("render", {})
    scene = kw.pop("scene", {})
    return GenerateConfig(out_dir=str(out_dir), **{**BASE, **kw}, render=RenderConfig(**render), scene=SceneConfig(**scene))


def _by_id(dataset: Path) -> dict[int, tuple[bytes, bytes]]:
    out = {}
    for entry in read_manifest(dataset)["shards"]:
        with ShardReader(dataset / entry["file"]) as r:
            for rec in r:
                out[rec.sequence_id] = (rec.inputs.tobytes(), rec.target.tobytes())
    return out


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "ds"
    generate(_cfg(out, sequences_per_shard=4))
    return out


def test_dataset_is_complete_and_valid(one_shard):
    manifest = read_manifest(one_shard)
    assert manifest["num_sequences"] == 4 and manifest["missing_shards"] == []
    assert manifest["seed"] == 5 and manifest["config"]["resolution"] == 32
    assert validate_shard(shard_path(one_shard, 0), 4) == []
    assert set(manifest["timings"]) >= {"scene", "render", "composite", "encode", "write"}
    with ShardReader(shard_path(one_shard, 0)) as r:
        rec = r.read(0)
        assert rec.inputs.shape == (3, 32, 32, 3) and rec.target.shape == (32, 32, 3)
        assert r.attrs["blender_version"].startswith("4.5")
        assert rec.params["spec"]["sequence_id"] == rec.sequence_id
        assert len(rec.params["spec"]["frames"]) == 3
    assert not (one_shard / ".partial").exists()


def test_same_seed_gives_identical_bytes_and_sharding_does_not_matter(one_shard, tmp_path):
    again = tmp_path / "two_shards"
    generate(_cfg(again, sequences_per_shard=2))
    assert _by_id(again) == _by_id(one_shard)
    other_seed = tmp_path / "seed6"
    generate(_cfg(other_seed, seed=6, num_sequences=1))
    assert _by_id(other_seed)[0] != _by_id(one_shard)[0]


def test_rerun_skips_complete_shards(one_shard):
    before = sha256_file(shard_path(one_shard, 0))
    mtime = shard_path(one_shard, 0).stat().st_mtime_ns
    generate(_cfg(one_shard, sequences_per_shard=4))
    assert shard_path(one_shard, 0).stat().st_mtime_ns == mtime
    assert sha256_file(shard_path(one_shard, 0)) == before


def test_killed_run_leaves_nothing_complete_and_resumes_to_the_same_bytes(one_shard, tmp_path):
    out = tmp_path / "killed"
    args = [str(BIN / "drs-generate"), f"out_dir={out}", "num_sequences=4", "sequence_length=3", "resolution=32",
            "seed=5", "sequences_per_shard=4", "progress=false"]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = cache_dir(_cfg(out, sequences_per_shard=4), 0)  # the cache is keyed by the whole config
    deadline = time.time() + 240
    while time.time() < deadline and len(list(cache.glob("seq-*.npz"))) < 1:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its Blender worker, mid-shard
    proc.wait()
    assert list(cache.glob("seq-*.npz")), "the run was killed before caching any sequence"
    assert not shard_path(out, 0).exists()
    assert not (out / "manifest.json").exists()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert sha256_file(shard_path(out, 0)) == sha256_file(shard_path(one_shard, 0))


def test_repair_here_re_renders_a_corrupt_shard_to_the_same_bytes(one_shard, tmp_path):
    """drs-verify --repair without a farm: the real generator, in this process, not a stand-in."""
    copy = tmp_path / "copy"
    shutil.copytree(one_shard, copy)
    clean = sha256_file(shard_path(copy, 0))
    data = bytearray(shard_path(copy, 0).read_bytes())
    data[len(data) // 2] ^= 0x01
    shard_path(copy, 0).write_bytes(bytes(data))
    run = subprocess.run([str(BIN / "drs-verify"), str(copy), "--repair", "--no-progress"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "shard-00000.h5): corrupt" in run.stderr + run.stdout
    assert sha256_file(shard_path(copy, 0)) == clean
    assert read_manifest(copy)["shards"] == read_manifest(one_shard)["shards"]


def test_reference_render_is_pixel_aligned_with_the_target(tmp_path):
    out = tmp_path / "ref"
    cfg = _cfg(out, num_sequences=2, resolution=48, sequences_per_shard=2,
               render={"quality": "reference", "reference_samples": 16},
               scene={"occluder_free_frame_prob": 1.0})
    generate(cfg)
    with ShardReader(shard_path(out, 0)) as r:
        for rec in r:
            for frame, occluded in zip(rec.inputs, rec.masks["occluder"], strict=True):
                assert occluded.sum() == 0
                shift, _, _ = phase_cross_correlation(rec.target.mean(-1), frame.astype(float).mean(-1), upsample_factor=20)
                assert np.abs(shift).max() < 0.5, shift


def test_occluder_masks_mark_the_pixels_occluders_changed(one_shard):
    checked = 0
    with ShardReader(shard_path(one_shard, 0)) as r:
        for rec in r:
            for frame, mask in zip(rec.inputs, rec.masks["occluder"], strict=True):
                m = mask.astype(bool)
                if m.mean() < 0.01 or m.mean() > 0.9:
                    continue
                # Under the mask the frame is no longer the (relit) cover: the colour ratio to the
                # target stops being smooth, so its spread inside the mask is far larger.
                ratio = (frame.astype(float) + 8) / (rec.target.astype(float) + 8)
                ratio /= np.median(ratio[~m], axis=0)
                err_in = np.abs(np.log(ratio[m])).mean()
                err_out = np.abs(np.log(ratio[~m])).mean()
                assert err_in > 1.5 * err_out, (err_in, err_out)
                checked += 1
    assert checked > 0, "no frame had a visible occluder"


def test_a_killed_worker_is_replaced_and_its_request_retried(tmp_path):
    from generator.scene_spec import sample_sequence

    cfg = _cfg(tmp_path)
    worker: RenderWorker = make_worker(cfg, str(tmp_path / "scratch"))
    spec = sample_sequence(0, 0, 1, 10, cfg.scene)
    request = {"sequence": spec.to_dict(), "cover": None, "albedo": 0.25, "occluder_covers": [], "frames": [0]}
    try:
        worker.start()
        os.kill(worker.pid, signal.SIGKILL)
        reply = worker.render(request)
        assert reply["ok"] and reply["frames"][0]["image"].shape == (32, 32, 3)
        assert worker.restarts == 1
    finally:
        worker.close()


def test_frames_failing_qa_are_redrawn_then_rejected_with_reasons(tmp_path):
    dark = {"light_irradiance": [1e-6, 2e-6], "ambient": [0.0, 0.0]}
    with pytest.raises(RuntimeError, match="all black"):
        generate(_cfg(tmp_path / "dark", num_sequences=1, sequences_per_shard=1, scene=dark, render={"qa_attempts": 2}))
    assert not shard_path(tmp_path / "dark", 0).exists()

    # One shard, sequence 0 lit normally and sequence 1 in the dark: every one of the
    # qa_attempts draws of sequence 1 is rendered and rejected, and the reasons reach the manifest.
    out = tmp_path / "mixed"
    cfg = _cfg(out, num_sequences=2, sequences_per_shard=2, sequence_length=2,
               render={"qa_attempts": 3, "covers_per_lighting": 1})
    renderer = ShardRenderer(cfg)
    try:
        stats = ShardStats()
        done = renderer._render_group([0], stats)
        renderer.cfg = dataclasses.replace(cfg, scene=SceneConfig(**dark))
        done |= renderer._render_group([1], stats)
        renderer._write(0, [0, 1], done, stats)
    finally:
        renderer.close()
    manifest = merge_parts(out, expected_shards=1)
    frames = manifest["rejected"]["frames"]
    assert [(f["sequence_id"], f["attempt"]) for f in frames] == [(1, 0), (1, 1), (1, 2)]
    assert all("all black" in f["reason"] for f in frames)
    [seq] = manifest["rejected"]["sequences"]
    assert seq["sequence_id"] == 1 and seq["reason"].startswith("failed QA on 3 attempts: frame ")
    assert manifest["num_sequences"] == 1
    with ShardReader(shard_path(out, 0)) as r:
        assert [rec.sequence_id for rec in r] == [0]


def test_cli_reports_a_bad_cover_folder_and_a_bad_value(tmp_path):
    (tmp_path / "covers").mkdir()
    (tmp_path / "covers" / "broken.jpg").write_bytes(b"nope")
    run = subprocess.run([str(BIN / "drs-generate"), f"out_dir={tmp_path / 'x'}", f"covers.dir={tmp_path / 'covers'}",
                          "num_sequences=1", "resolution=16", "sequence_length=1", "progress=false"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "no usable cover" in run.stderr + run.stdout
    run = subprocess.run([str(BIN / "drs-generate"), f"out_dir={tmp_path / 'y'}", "render.quality=best"], capture_output=True, text=True)
    assert run.returncode == 2 and "render.quality" in run.stderr + run.stdout
