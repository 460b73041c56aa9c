"""The paper preset and the camera effects, without Blender: composition, sampling, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from generator.camera import apply_effects, photograph, sample_effects
from generator.cli_generate import CONF_DIR
from generator.config import CameraConfig, ConfigError, SceneConfig, register, validate
from generator.scene_spec import CAMERA_HEIGHT, MATERIAL_KINDS, SequenceSpec, sample_sequence

register()


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return validate(compose(config_name="generate", overrides=list(overrides)))


@pytest.fixture(scope="module")
def paper() -> SceneConfig:
    return _compose("scene=paper").scene


# -- the preset -------------------------------------------------------------------------------------


def test_paper_preset_and_camera_groups_compose(paper):
    cfg = _compose("scene=paper", "camera=phone")
    assert cfg.camera.enabled and cfg.camera.jpeg_quality == [75, 95]
    assert paper.occluder_height is not None and paper.relief_strength[1] > 0
    assert not _compose().camera.enabled  # the default renders plain images
    assert _compose("scene=paper", "scene.occluders_max=2").scene.occluders_max == 2


@pytest.mark.parametrize("override, key", [
    ("scene.occluder_materials=[wood,plastic]", "scene.occluder_materials"),
    ("scene.occluder_height=[0.5,1.6]", "scene.occluder_height"),
    ("scene.coat=[0.2,1.5]", "scene.coat"),
    ("camera.jpeg_quality=[90,120]", "camera.jpeg_quality"),
    ("camera.vignetting=[0.5,0.2]", "camera.vignetting"),
])
def test_bad_preset_values_fail_naming_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _compose("scene=paper", "camera=phone", override)


def test_paper_scenes_are_harder_than_the_default(paper):
    """One large textured occluder in view in most photos (30 % show the cover unobstructed),
    coloured lights, a cover with relief."""
    specs = [sample_sequence(0, sid, 9, 1000, paper) for sid in range(20)]
    frames = [f for s in specs for f in s.frames]
    occluded = [f for f in frames if f.occluders]
    assert 0.6 * len(frames) <= len(occluded) <= 0.9 * len(frames) and all(len(f.occluders) == 1 for f in occluded)
    occ = [f.occluders[0] for f in occluded]
    assert all(o.in_frame for o in occ)
    # largest side as a fraction of the frame width seen at the occluder's height
    frac = [max(o.scale) / (2 * 0.5 * (CAMERA_HEIGHT - o.location[2]) / CAMERA_HEIGHT) for o in occ if o.kind != "rod"]
    assert np.median(frac) > 0.35
    assert {o.material.kind for o in occ} <= set(paper.occluder_materials) and len({o.material.kind for o in occ}) >= 5
    # occluders stay below every light of their frame, so none swallows a light
    assert all(o.location[2] < min(lt.position[2] for lt in f.lights) for f in occluded for o in f.occluders)
    assert all(s.relief.strength > 0 for s in specs)
    default = [sample_sequence(0, sid, 9, 1000, SceneConfig()) for sid in range(20)]
    assert all(s.relief.strength == 0 for s in default)
    saturation = lambda fs: np.mean([1 - min(lt.color) for f in fs for lt in f.lights])  # noqa: E731
    assert saturation(frames) > saturation([f for s in default for f in s.frames]) + 0.1


def test_new_fields_leave_the_default_scenes_unchanged():
    """Datasets rendered before the preset existed regenerate identically: the default draws
    none of the new random numbers (the reference values are those of the code before them)."""
    spec = sample_sequence(3, 7, 2, 1000, SceneConfig())
    assert spec.cover_index == 182 and spec.occluder_covers == [214, 513, 676, 300]
    assert round(spec.frames[0].lights[0].position[0], 6) == -0.469473
    assert [len(f.occluders) for f in spec.frames] == [3, 3]


def test_paper_spec_round_trips_and_shares_relief_within_a_lighting_group(paper):
    a, b, c = (sample_sequence(1, sid, 3, 1000, paper, covers_per_lighting=3) for sid in (3, 4, 6))
    assert SequenceSpec.from_dict(a.to_dict()).to_dict() == a.to_dict()
    assert a.relief == b.relief and a.frames == b.frames and a.relief != c.relief
    assert sample_sequence(1, 3, 3, 1000, paper, 3, attempt=1).relief != a.relief  # a QA retry redraws it
    assert set(MATERIAL_KINDS) >= {"wood", "marble", "bark", "woven", "clay", "rope"}


# -- camera effects -----------------------------------------------------------------------------------


def _renders(k: int = 3, size: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = np.clip(rng.uniform(0.05, 0.9, size=(size, size, 3)), 0, 1).astype(np.float32)
    return [base * (0.6 + 0.2 * j) for j in range(k)]


def test_camera_effects_are_deterministic_per_sequence_and_recorded():
    cam = CameraConfig(enabled=True)
    renders = _renders()
    snapshot = [r.copy() for r in renders]
    a, pa = photograph(renders, cam, seed=4, sequence_id=9)
    b, pb = photograph(renders, cam, seed=4, sequence_id=9)
    assert np.array_equal(a, b) and pa == pb
    assert all(np.array_equal(r, s) for r, s in zip(renders, snapshot, strict=True))  # renders untouched
    c, _ = photograph(renders, cam, seed=4, sequence_id=10)
    d, _ = photograph(renders, cam, seed=4, sequence_id=9, attempt=1)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert a.shape == (3, 48, 48, 3) and a.dtype == np.uint8
    assert len(pa) == 3 and {"gains", "shift", "jpeg_quality", "vignetting"} <= set(pa[0])
    assert len({tuple(p["gains"]) for p in pa}) == 3  # each image its own exposure


def test_each_camera_effect_does_what_it_says():
    flat = np.full((64, 64, 3), 0.4, np.float32)
    none = dict(gains=(1.0, 1.0, 1.0), vignetting=0.0, blur_sigma=0.0, motion=(0.0, 0.0), shift=(0.0, 0.0),
                rotation_deg=0.0, shot_noise=0.0, read_noise=0.0, jpeg_quality=0, noise_seed=1)
    fx = sample_effects(np.random.default_rng(0), CameraConfig(enabled=True), 64)
    plain = apply_effects(flat, dataclasses.replace(fx, **none))
    assert plain.std() == 0
    vignetted = apply_effects(flat, dataclasses.replace(fx, **{**none, "vignetting": 0.3}))
    assert vignetted[32, 32].mean() > vignetted[0, 0].mean() + 20
    noisy = apply_effects(flat, dataclasses.replace(fx, **{**none, "shot_noise": 0.002}))
    dark = apply_effects(flat * 0.1, dataclasses.replace(fx, **{**none, "shot_noise": 0.002}))
    assert noisy.std() > 2 and abs(float(noisy.mean()) - float(plain.mean())) < 2
    assert dark.astype(float).std() > 0  # signal-dependent: still noisy in the dark, but ...
    gained = apply_effects(flat, dataclasses.replace(fx, **{**none, "gains": (1.2, 1.0, 0.8)}))
    assert gained[..., 0].mean() > plain[..., 0].mean() > gained[..., 2].mean()
    edge = np.zeros((64, 64, 3), np.float32)
    edge[:, 32:] = 0.8
    shifted = apply_effects(edge, dataclasses.replace(fx, **{**none, "shift": (0.5, 0.0)}))
    sharp = apply_effects(edge, dataclasses.replace(fx, **none))
    assert 0 < shifted[10, 32].mean() < sharp[10, 32].mean()  # half a pixel: the edge pixel is mixed
    blurred = apply_effects(edge, dataclasses.replace(fx, **{**none, "blur_sigma": 1.5}))
    assert blurred[10, 30].mean() > 0 and blurred[10, 33].mean() < sharp[10, 33].mean()
    jpeg = apply_effects(edge + np.random.default_rng(1).uniform(0, 0.2, edge.shape).astype(np.float32),
                         dataclasses.replace(fx, **{**none, "jpeg_quality": 75}))
    assert not np.array_equal(jpeg, apply_effects(edge, dataclasses.replace(fx, **none)))


def test_a_fixed_light_stays_put_in_every_image_and_keeps_its_share():
    """scene.light_fixed_share: one light per sequence in the same place in every image, first in
    each image's list; the moving lights split the rest of the brightness budget."""
    base = dataclasses.replace(SceneConfig(), lights_min=1, lights_max=2)
    spec = sample_sequence(5, 11, 9, 1000, dataclasses.replace(base, light_fixed_share=0.3))
    fixed = [f.lights[0] for f in spec.frames]
    assert all(lt == fixed[0] for lt in fixed)
    assert all(len(f.lights) >= 2 for f in spec.frames)
    assert len({f.lights[1].position for f in spec.frames}) == 9  # the others move
    with pytest.raises(ConfigError, match=r"scene\.light_fixed_share"):
        _compose("scene=paper", "scene.light_fixed_share=1.0")
