"""scene=paper and camera=phone through real (tiny) Blender renders, 1 and 3 covers per lighting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from generator.cli_generate import CONF_DIR, generate
from generator.config import register, validate
from generator.covers import ProceduralCovers
from generator.dataset_format import ShardReader, read_manifest, shard_path, validate_shard

pytestmark = pytest.mark.blender
register()


def _render(out: Path, *overrides: str) -> dict[int, object]:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = validate(compose(config_name="generate", overrides=[
            f"out_dir={out}", "scene=paper", "num_sequences=3", "sequence_length=2", "resolution=32", "seed=2",
            "progress=false", "render.threads=1", *overrides]))
    generate(cfg)
    assert read_manifest(out)["num_sequences"] == 3 and validate_shard(shard_path(out, 0), 3) == []
    with ShardReader(shard_path(out, 0)) as reader:
        return {rec.sequence_id: rec for rec in reader}


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    return {
        "phone3": _render(tmp / "phone3", "camera=phone", "render.covers_per_lighting=3"),
        "plain1": _render(tmp / "plain1", "render.covers_per_lighting=1"),
        "flat1": _render(tmp / "flat1", "render.covers_per_lighting=1", "scene.relief_strength=[0,0]", "scene.coat=[0,0]"),
    }


def test_targets_are_the_clean_covers_whatever_the_camera(renders):
    covers = ProceduralCovers(seed=2)
    for recs in renders.values():
        for rec in recs.values():
            assert np.array_equal(rec.target, covers.get(rec.params["spec"]["cover_index"], 32))


def test_three_covers_share_one_lighting_and_surface_but_not_the_camera(renders):
    recs = renders["phone3"]
    specs = [recs[i].params["spec"] for i in range(3)]
    assert specs[0]["frames"] == specs[1]["frames"] == specs[2]["frames"]
    assert specs[0]["relief"] == specs[2]["relief"] and specs[0]["relief"]["strength"] > 0
    cams = [recs[i].params["camera"] for i in range(3)]
    assert all(len(c) == 2 for c in cams) and cams[0] != cams[1]
    assert "camera" not in renders["plain1"][0].params


def test_one_cover_per_lighting_draws_each_sequence_its_own_scene(renders):
    recs = renders["plain1"]
    specs = [recs[i].params["spec"] for i in range(3)]
    assert specs[0]["frames"] != specs[1]["frames"] and specs[1]["relief"] != specs[2]["relief"]
    # sequence 0 is lighting group 0 under either grouping: same scene, camera effects on top
    assert specs[0]["frames"] == renders["phone3"][0].params["spec"]["frames"]
    assert not np.array_equal(recs[0].inputs, renders["phone3"][0].inputs)


def test_relief_reaches_the_render(renders):
    """Same scenes with a flat cover: the relief tilts the surface, so the shading and the sheen
    change visibly where the cover is in view."""
    for sid in range(3):
        bumpy, flat = renders["plain1"][sid], renders["flat1"][sid]
        assert bumpy.params["spec"]["frames"] == flat.params["spec"]["frames"]
        assert flat.params["spec"]["relief"]["strength"] == 0
        visible = (bumpy.masks["occluder"] == 0) & (flat.masks["occluder"] == 0)
        diff = np.abs(bumpy.inputs.astype(np.float32) - flat.inputs.astype(np.float32)).mean(-1)
        assert diff[visible].mean() > 1.0, diff[visible].mean()
