"""Generator pieces that need no Blender: seeding, config validation, covers, compositing, QA."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from generator.cli_generate import CONF_DIR
from generator.composite import composite_cover, linear_to_srgb_u8, qa_problem, srgb_to_linear
from generator.config import ConfigError, GenerateConfig, SceneConfig, register, validate
from generator.covers import CoverError, FolderCovers, ProceduralCovers, to_rgb
from generator.pipeline import shard_sequence_ids
from generator.scene_spec import SequenceSpec, sample_sequence

register()


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="generate", overrides=list(overrides))


# -- seeding ------------------------------------------------------------------------------------


def test_sequence_is_a_pure_function_of_seed_and_id():
    scene = SceneConfig()
    alone = sample_sequence(7, 5, 4, 1000, scene).to_dict()
    # Sampling others first, in another order, changes nothing: no global RNG state.
    for sid in (9, 3, 0):
        sample_sequence(7, sid, 4, 1000, scene)
    assert sample_sequence(7, 5, 4, 1000, scene).to_dict() == alone
    assert sample_sequence(7, 6, 4, 1000, scene).to_dict() != alone
    assert sample_sequence(8, 5, 4, 1000, scene).to_dict() != alone


def test_each_image_gets_its_own_cycles_seed_and_lighting():
    spec = sample_sequence(0, 0, 9, 1000, SceneConfig())
    seeds = [f.cycles_seed for f in spec.frames]
    assert len(set(seeds)) == 9
    assert len({tuple(f.lights[0].position) for f in spec.frames}) == 9


def test_lighting_groups_share_lights_but_not_covers():
    scene = SceneConfig()
    a, b = (sample_sequence(0, sid, 3, 10**6, scene, covers_per_lighting=3) for sid in (3, 4))
    assert a.lighting_group == b.lighting_group == 1
    assert a.to_dict()["frames"] == b.to_dict()["frames"]
    assert a.cover_index != b.cover_index
    retry = sample_sequence(0, 4, 3, 10**6, scene, covers_per_lighting=3, attempt=1)
    assert retry.to_dict()["frames"] != b.to_dict()["frames"] and retry.cover_index == b.cover_index


def test_spec_round_trips_through_json():
    spec = sample_sequence(1, 2, 3, 50, SceneConfig())
    again = SequenceSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_shard_ids_cover_every_sequence_once():
    cfg = GenerateConfig(num_sequences=10, sequences_per_shard=4)
    ids = [sid for i in range(cfg.num_shards) for sid in shard_sequence_ids(cfg, i)]
    assert cfg.num_shards == 3 and ids == list(range(10))


# -- config ---------------------------------------------------------------------------------------


def test_default_config_composes_and_validates():
    cfg = validate(_compose("num_sequences=5", "render.quality=reference", "shard=1", "sequences_per_shard=2"))
    assert cfg.render.quality == "reference" and cfg.shard == 1 and cfg.covers.dir is None
    content = cfg.content_config()
    assert "out_dir" not in content and "shard" not in content and "device" not in content["render"]


@pytest.mark.parametrize(
    "override, key",
    [
        ("render.quality=best", "render.quality"),
        ("resolution=2", "resolution"),
        ("num_sequences=0", "num_sequences"),
        ("shard=5", "shard"),
        ("scene.roughness=[0.5,0.1]", "scene.roughness"),
        ("render.covers_per_lighting=0", "render.covers_per_lighting"),
    ],
)
def test_bad_values_fail_naming_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(_compose(override))


def test_wrong_type_fails_at_compose_time():
    with pytest.raises(Exception, match="resolution"):
        _compose("resolution=big")


def test_gpu_render_group_composes():
    assert validate(_compose("render=gpu")).render.device == "auto"


# -- covers ---------------------------------------------------------------------------------------


def test_procedural_covers_are_deterministic_and_varied():
    covers = ProceduralCovers(seed=3)
    a, b = covers.get(11, 48), covers.get(11, 48)
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, covers.get(12, 48))
    assert not np.array_equal(a, ProceduralCovers(seed=4).get(11, 48))
    assert a.std() > 10  # not a flat colour


def _write_cover_zoo(folder):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "a.jpg")
    Image.fromarray(rgb).save(folder / "b.webp")
    Image.fromarray(rgb[..., 0]).save(folder / "c_grey.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "d_cmyk.jpg")
    rgba = np.dstack([rgb, np.full((40, 60), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "e_alpha.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / "f_16bit.png")
    # smooth and asymmetric, so JPEG keeps it and every orientation looks different
    yy, xx = np.mgrid[0:40, 0:60]
    smooth = np.dstack([xx * 4, yy * 6, (xx * yy) // 10]).clip(0, 255).astype(np.uint8)
    rotated = Image.fromarray(smooth)
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated.save(folder / "g_exif.jpg", exif=exif)
    (folder / "h_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return rgb, smooth


def test_folder_covers_read_every_kind_and_skip_broken_files(tmp_path):
    rgb, smooth = _write_cover_zoo(tmp_path)
    covers = FolderCovers(tmp_path)
    assert len(covers) == 8
    images = [covers.get(i, 32) for i in range(len(covers))]
    assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in images)
    # the corrupt file (index 7) fell through to the next usable one, and was recorded
    assert any("h_corrupt.png" in k for k in covers.rejected)
    assert np.array_equal(images[7], images[0])
    # EXIF orientation 6 ("rotate 90 clockwise to display") is applied: the stored 60x40 landscape
    # comes out as the 40x60 portrait a viewer shows.
    with Image.open(tmp_path / "g_exif.jpg") as im:
        shown = np.asarray(to_rgb(im), dtype=float)
    assert shown.shape == (60, 40, 3)
    np.testing.assert_allclose(shown, np.rot90(smooth, -1), atol=12)  # JPEG error only
    # 16-bit values are scaled down, not truncated to their low byte
    with Image.open(tmp_path / "f_16bit.png") as im:
        grey = np.asarray(to_rgb(im), dtype=float)
    np.testing.assert_allclose(grey[..., 0], rgb[..., 0], atol=1)


def test_zero_usable_covers_is_a_clear_error(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CoverError, match="no usable cover"):
        FolderCovers(tmp_path).get(0, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CoverError, match="holds no images"):
        FolderCovers(tmp_path / "empty")
    with pytest.raises(CoverError, match="not a directory"):
        FolderCovers(tmp_path / "missing")


# -- compositing and QA ---------------------------------------------------------------------------


def test_srgb_round_trip():
    u8 = np.arange(256, dtype=np.uint8)[None, :, None].repeat(3, -1)
    assert np.array_equal(linear_to_srgb_u8(srgb_to_linear(u8 / 255.0)), u8)


def test_composite_replaces_grey_by_the_cover_only_where_the_plane_is_visible():
    h = 8
    albedo = 0.25
    light = np.full((h, h, 3), 2.0, np.float32)
    # Cycles' DiffCol pass of the grey cover: its albedo times what the glossy layer lets through.
    diffuse_color = np.full((h, h, 3), albedo * 0.9, np.float32)
    glossy = np.zeros((h, h, 3), np.float32)
    glossy[2, 2] = 0.5
    plane = np.ones((h, h), np.float32)
    plane[5:, 5:] = 0.0  # an occluder
    occluder_colour = np.array([0.1, 0.7, 0.2], np.float32)
    image = diffuse_color * light + glossy
    image[5:, 5:] = occluder_colour
    cover = np.random.default_rng(0).random((h, h, 3)).astype(np.float32)
    out = composite_cover({"image": image, "diffuse_color": diffuse_color, "diffuse_light": light, "plane": plane}, cover, albedo)
    expected = cover * 0.9 * light + glossy
    np.testing.assert_allclose(out[:5], expected[:5], rtol=1e-6)
    np.testing.assert_allclose(out[5:, 5:], np.broadcast_to(occluder_colour, (3, 3, 3)))


@pytest.mark.parametrize(
    "linear, reason",
    [
        (np.full((8, 8, 3), np.nan, np.float32), "non-finite"),
        (np.zeros((8, 8, 3), np.float32), "all black"),
        (np.full((8, 8, 3), 5.0, np.float32), "saturated"),
        (np.broadcast_to(np.array([1.0, 0.0, 1.0], np.float32), (8, 8, 3)).copy(), "magenta"),
    ],
)
def test_qa_names_what_is_wrong(linear, reason):
    assert reason in qa_problem(linear, linear_to_srgb_u8(linear))


def test_qa_passes_an_ordinary_frame():
    linear = np.random.default_rng(0).uniform(0.05, 0.6, (8, 8, 3)).astype(np.float32)
    assert qa_problem(linear, linear_to_srgb_u8(linear)) is None
