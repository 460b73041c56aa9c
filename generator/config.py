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

    def __post_init__(self) -> None:
        _check(1 <= self.lights_min <= self.lights_max, "scene.lights_min", "need 1 <= lights_min <= lights_max", self.lights_min)
        _check(self.occluders_max >= 0, "scene.occluders_max", "must be >= 0", self.occluders_max)
        _check(0.0 <= self.occluder_free_frame_prob <= 1.0, "scene.occluder_free_frame_prob", "must be in [0, 1]", self.occluder_free_frame_prob)
        for name in ("light_height", "light_irradiance", "light_radius", "occluder_size", "roughness", "specular", "ambient"):
            _check_range(self, "scene", name)
        _check(0.0 < self.light_height[0] and self.light_height[1] < 1.5, "scene.light_height",
               "lights must sit between the cover (z=0) and the camera (z=1.5)", self.light_height)


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
    scene: SceneConfig = field(default_factory=SceneConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    covers: CoversConfig = field(default_factory=CoversConfig)

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
        for key in ("out_dir", "shard", "progress", "scratch_dir"):
            d.pop(key)
        for key in ("device", "threads", "recycle_after", "max_memory_mb", "max_retries", "timeout_s"):
            d["render"].pop(key)
        return d


def register() -> None:
    ConfigStore.instance().store(name="generate_schema", node=GenerateConfig)


def validate(cfg: DictConfig) -> GenerateConfig:
    """Composed config -> checked GenerateConfig (raises ConfigError naming the bad key)."""
    return OmegaConf.to_object(cfg)
