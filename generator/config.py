"""Schemas of `drs-generate`'s config (conf/generate.yaml and its groups), registered with Hydra.

OmegaConf checks types when the config is composed; `validate` then instantiates the dataclasses,
whose __post_init__ checks ranges, so a bad value fails before any rendering with its full key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

QUALITIES = ("fast", "reference")
DEVICES = ("cpu", "auto", "cuda", "optix", "hip", "oneapi", "metal")


class ConfigError(ValueError):
    """A config value out of range; the message names the key."""


def _check(cond: bool, key: str, msg: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r}: {msg}")


def _check_range(obj: Any, prefix: str, name: str) -> None:
    lo, hi = getattr(obj, name)
    _check(lo <= hi, f"{prefix}.{name}", "must be a [low, high] pair with low <= high", [lo, hi])


@dataclass
class SceneConfig:
    lights_min: int = 1
    lights_max: int = 3
    light_height: list[float] = field(default_factory=lambda: [0.35, 1.3])
    light_spread: float = 0.9
    light_irradiance: list[float] = field(default_factory=lambda: [0.5, 1.1])
    light_radius: list[float] = field(default_factory=lambda: [0.005, 0.06])
    occluders_max: int = 3
    occluder_free_frame_prob: float = 0.15
    occluder_size: list[float] = field(default_factory=lambda: [0.04, 0.2])
    roughness: list[float] = field(default_factory=lambda: [0.08, 0.45])
    specular: list[float] = field(default_factory=lambda: [0.3, 1.0])
    ambient: list[float] = field(default_factory=lambda: [0.02, 0.25])
    occluder_covers: int = 4  # other covers available to texture occluders in a sequence
    # --- added for the paper preset; the defaults keep the original scenes draw for draw ---
    light_tint_prob: float = 0.2  # chance that a light gets a strong colour tint
    light_tint_min: float = 0.6  # lowest per-channel factor of such a tint (0: pure colours)
    occluders_min: int = 1  # an occluded frame holds between occluders_min and occluders_max
    # Occluders in view at a height drawn from this range (m), sized as a fraction of the frame
    # width seen at that height. None: the original placement on a light-to-cover segment, sized
    # by occluder_size.
    occluder_height: list[float] | None = None
    occluder_frame_fraction: list[float] = field(default_factory=lambda: [0.25, 0.55])
    # Occluder materials drawn uniformly from these (generator.scene_spec.MATERIAL_KINDS). None:
    # the original mix of solid, procedural noise and cover-textured.
    occluder_materials: list[str] | None = None
    # Cover relief (bump map): strength 0 keeps the plane flat. The target is always the flat albedo.
    relief_strength: list[float] = field(default_factory=lambda: [0.0, 0.0])
    relief_grain_scale: list[float] = field(default_factory=lambda: [150.0, 400.0])  # paper grain, per cover width
    relief_wave_scale: list[float] = field(default_factory=lambda: [1.5, 6.0])  # laminate waves
    relief_wrinkle_prob: float = 0.5  # chance of creases and wrinkles on top of grain and waves
    coat: list[float] = field(default_factory=lambda: [0.0, 0.0])  # glossy laminate coat weight
    coat_roughness: list[float] = field(default_factory=lambda: [0.03, 0.2])
    # One light per sequence that stays where it is in every image (a room lamp or window beside the
    # moving lamp), carrying this share of each image's brightness; 0: none (every light moves).
    light_fixed_share: float = 0.0

    def __post_init__(self) -> None:
        from generator.scene_spec import MATERIAL_KINDS

        _check(1 <= self.lights_min <= self.lights_max, "scene.lights_min", "need 1 <= lights_min <= lights_max", self.lights_min)
        _check(self.occluders_max >= 0, "scene.occluders_max", "must be >= 0", self.occluders_max)
        _check(1 <= self.occluders_min <= max(1, self.occluders_max), "scene.occluders_min", "need 1 <= occluders_min <= occluders_max", self.occluders_min)
        _check(0.0 <= self.occluder_free_frame_prob <= 1.0, "scene.occluder_free_frame_prob", "must be in [0, 1]", self.occluder_free_frame_prob)
        _check(0.0 <= self.light_tint_prob <= 1.0, "scene.light_tint_prob", "must be in [0, 1]", self.light_tint_prob)
        _check(0.0 <= self.light_tint_min <= 1.0, "scene.light_tint_min", "must be in [0, 1]", self.light_tint_min)
        _check(0.0 <= self.light_fixed_share < 1.0, "scene.light_fixed_share", "must be in [0, 1)", self.light_fixed_share)
        _check(0.0 <= self.relief_wrinkle_prob <= 1.0, "scene.relief_wrinkle_prob", "must be in [0, 1]", self.relief_wrinkle_prob)
        for name in ("light_height", "light_irradiance", "light_radius", "occluder_size", "roughness", "specular", "ambient",
                     "occluder_frame_fraction", "relief_strength", "relief_grain_scale", "relief_wave_scale", "coat", "coat_roughness"):
            _check_range(self, "scene", name)
        _check(0.0 < self.light_height[0] and self.light_height[1] < 1.5, "scene.light_height",
               "lights must sit between the cover (z=0) and the camera (z=1.5)", self.light_height)
        if self.occluder_height is not None:
            _check_range(self, "scene", "occluder_height")
            _check(0.0 < self.occluder_height[0] and self.occluder_height[1] < 1.5, "scene.occluder_height",
                   "occluders must sit between the cover (z=0) and the camera (z=1.5)", self.occluder_height)
        _check(0.0 < self.occluder_frame_fraction[0] and self.occluder_frame_fraction[1] <= 1.5, "scene.occluder_frame_fraction",
               "must be a fraction of the frame width in (0, 1.5]", self.occluder_frame_fraction)
        if self.occluder_materials is not None:
            bad = [m for m in self.occluder_materials if m not in MATERIAL_KINDS]
            _check(bool(self.occluder_materials) and not bad, "scene.occluder_materials",
                   f"must be a non-empty list of {MATERIAL_KINDS}", self.occluder_materials)
        _check(0.0 <= self.coat[0] and self.coat[1] <= 1.0, "scene.coat", "must lie in [0, 1]", self.coat)


@dataclass
class CameraConfig:
    """What a phone camera does to each photo, applied to the inputs only (the target stays clean).
    Ranges are drawn per image; `enabled: false` renders the plain images (conf/camera/none.yaml)."""

    enabled: bool = False
    exposure_ev: float = 0.3  # std of the per-image exposure change, in stops
    white_balance: float = 0.05  # std of the per-channel log gain
    vignetting: list[float] = field(default_factory=lambda: [0.0, 0.35])  # light lost in the corners
    shot_noise: list[float] = field(default_factory=lambda: [0.0, 0.0015])  # variance per unit linear signal
    read_noise: list[float] = field(default_factory=lambda: [0.0, 0.002])  # std, linear units
    blur_sigma: list[float] = field(default_factory=lambda: [0.0, 0.7])  # defocus, pixels (at 256 px)
    motion_prob: float = 0.15  # chance of a short straight motion blur instead of defocus
    motion_length: list[float] = field(default_factory=lambda: [1.0, 3.0])  # pixels (at 256 px)
    shift_px: float = 0.3  # std of the sub-pixel misregistration, pixels (at 256 px), per axis
    rotation_deg: float = 0.1  # std of the in-plane rotation left after alignment
    jpeg_quality: list[int] = field(default_factory=lambda: [75, 95])  # 0, 0: no JPEG

    def __post_init__(self) -> None:
        for name in ("vignetting", "shot_noise", "read_noise", "blur_sigma", "motion_length", "jpeg_quality"):
            _check_range(self, "camera", name)
        for name in ("exposure_ev", "white_balance", "shift_px", "rotation_deg"):
            _check(getattr(self, name) >= 0, f"camera.{name}", "must be >= 0", getattr(self, name))
        _check(0.0 <= self.motion_prob <= 1.0, "camera.motion_prob", "must be in [0, 1]", self.motion_prob)
        _check(0.0 <= self.vignetting[0] and self.vignetting[1] < 1.0, "camera.vignetting", "must lie in [0, 1)", self.vignetting)
        q = self.jpeg_quality
        _check(q == [0, 0] or (1 <= q[0] and q[1] <= 100), "camera.jpeg_quality", "must be [0, 0] (off) or lie in [1, 100]", q)


@dataclass
class RenderConfig:
    quality: str = "fast"  # fast: lighting on grey + exact cover composite; reference: plain path trace
    samples: int = 2  # fast path samples per pixel (denoised)
    reference_samples: int = 512
    max_bounces: int = 4
    denoise: bool = True
    adaptive_threshold: float = 0.0
    device: str = "cpu"
    threads: int = 0  # 0: all cores
    grey_albedo: float = 0.25  # linear albedo of the stand-in cover in fast mode
    covers_per_lighting: int = 3  # fast mode: sequences sharing one lighting render
    recycle_after: int = 50  # requests per worker before it is replaced
    max_memory_mb: float = 4000.0
    max_retries: int = 2
    qa_attempts: int = 3  # re-renders with a new sub-seed before a sequence is rejected
    timeout_s: float = 600.0  # per image
    # Added to every Cycles seed: the same scenes with independent render noise (the render
    # benchmark gives its reference this, so noise shared with the fast render cannot flatter it).
    seed_salt: int = 0

    def __post_init__(self) -> None:
        _check(self.quality in QUALITIES, "render.quality", f"must be one of {QUALITIES}", self.quality)
        _check(self.samples >= 1, "render.samples", "must be >= 1", self.samples)
        _check(self.reference_samples >= 1, "render.reference_samples", "must be >= 1", self.reference_samples)
        _check(self.max_bounces >= 0, "render.max_bounces", "must be >= 0", self.max_bounces)
        _check(self.device.lower() in DEVICES, "render.device", f"must be one of {DEVICES}", self.device)
        _check(0.0 < self.grey_albedo <= 1.0, "render.grey_albedo", "must be in (0, 1]", self.grey_albedo)
        _check(self.covers_per_lighting >= 1, "render.covers_per_lighting", "must be >= 1", self.covers_per_lighting)
        _check(self.recycle_after >= 1, "render.recycle_after", "must be >= 1", self.recycle_after)
        _check(self.max_retries >= 0, "render.max_retries", "must be >= 0", self.max_retries)
        _check(self.qa_attempts >= 1, "render.qa_attempts", "must be >= 1", self.qa_attempts)


@dataclass
class CoversConfig:
    dir: str | None = None  # None: built-in procedural covers


@dataclass
class GenerateConfig:
    out_dir: str = "data/synthetic"
    num_sequences: int = 12
    sequence_length: int = 9
    resolution: int = 256
    seed: int = 0
    sequences_per_shard: int = 64
    shard: int | None = None  # render only this shard (farm tasks); None: every shard, then merge
    progress: bool = True
    scratch_dir: str | None = None  # Blender's pass files; default: a temp dir in /dev/shm or /tmp
    overwrite: bool = False  # out_dir holds a drs dataset of another config: delete it and start over
    allow_version_change: bool = False  # add to a dataset written by another generator version (repairs)
    scene: SceneConfig = field(default_factory=SceneConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    covers: CoversConfig = field(default_factory=CoversConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)

    def __post_init__(self) -> None:
        _check(self.num_sequences >= 1, "num_sequences", "must be >= 1", self.num_sequences)
        _check(self.sequence_length >= 1, "sequence_length", "must be >= 1", self.sequence_length)
        _check(8 <= self.resolution <= 4096, "resolution", "must be in [8, 4096] pixels", self.resolution)
        _check(self.sequences_per_shard >= 1, "sequences_per_shard", "must be >= 1", self.sequences_per_shard)
        _check(self.seed >= 0, "seed", "must be >= 0", self.seed)
        if self.shard is not None:
            _check(0 <= self.shard < self.num_shards, "shard", f"must be in [0, {self.num_shards - 1}]", self.shard)

    @property
    def num_shards(self) -> int:
        return -(-self.num_sequences // self.sequences_per_shard)

    def content_config(self) -> dict[str, Any]:
        """What determines the data: stored in every shard and the manifest. Leaves out where it is
        written and which task wrote it, so a repaired or re-sharded shard has identical bytes."""
        d = OmegaConf.to_container(OmegaConf.structured(self), resolve=True)
        for key in ("out_dir", "shard", "progress", "scratch_dir", "overwrite", "allow_version_change"):
            d.pop(key)
        for key in ("device", "threads", "recycle_after", "max_memory_mb", "max_retries", "timeout_s"):
            d["render"].pop(key)
        return d


def register() -> None:
    ConfigStore.instance().store(name="generate_schema", node=GenerateConfig)


def validate(cfg: DictConfig) -> GenerateConfig:
    """Composed config -> checked GenerateConfig (raises ConfigError naming the bad key)."""
    return OmegaConf.to_object(cfg)
