"""Scene descriptions: plain dataclasses, sampled from a counter-based RNG, no Blender needed.

Geometry (scene units are metres, +z up):
- the cover plane spans [-0.5, 0.5] x [-0.5, 0.5] at z = 0;
- the camera sits at (0, 0, CAMERA_HEIGHT) looking straight down, its field of view chosen so the
  plane exactly fills the square frame (perspective maps a fronto-parallel plane affinely, so
  pixel (r, c) sees exactly texel (r, c) of a texture at render resolution);
- lights and occluders live above the plane, below the camera.

Everything random about sequence `i` comes from `numpy.random.default_rng([seed, i])`, so any
sequence can be regenerated alone, independent of sharding, worker count or order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from generator.config import SceneConfig

CAMERA_HEIGHT = 1.5
PLANE_HALF = 0.5
# The camera's full field of view that makes the plane fill the frame exactly.
CAMERA_FOV = 2.0 * math.atan(PLANE_HALF / CAMERA_HEIGHT)

OCCLUDER_KINDS = ("cube", "sphere", "cylinder", "cone", "torus", "ring", "rod", "blob")
# "procedural" is plain noise; wood (rings), marble (veins), bark (ridged), woven (strips), clay
# (cracked cells) and rope (twisted strands) are the textures of the paper's occluders.
MATERIAL_KINDS = ("solid", "procedural", "cover", "wood", "marble", "bark", "woven", "clay", "rope")


@dataclass
class LightSpec:
    position: tuple[float, float, float]
    power: float  # watts, as Blender's point light `energy`
    color: tuple[float, float, float]  # linear RGB, max component 1
    radius: float  # soft-shadow radius in metres


@dataclass
class MaterialSpec:
    kind: str  # one of MATERIAL_KINDS
    color: tuple[float, float, float]  # linear base colour (solid) or tint (procedural)
    roughness: float
    pattern_scale: float = 5.0  # procedural texture scale
    pattern_seed: float = 0.0  # offsets the procedural noise so no two look alike
    cover_index: int = -1  # which occluder cover image textures it (kind == "cover")


@dataclass
class ReliefSpec:
    """The cover's surface relief, a bump map over the flat albedo (which stays the target).
    Heights are procedural noise in cover-width units: grain (fine), waves (broad), wrinkles."""

    strength: float = 0.0  # typical surface tilt, radians; 0: a flat plane
    grain_scale: float = 200.0  # noise frequency, per cover width
    wave_scale: float = 3.0
    wrinkles: float = 0.0  # weight of creases (0: none)
    seed: float = 0.0  # offsets every noise so no two covers share a relief
    coat: float = 0.0  # weight of a glossy laminate coat above the print
    coat_roughness: float = 0.1


@dataclass
class OccluderSpec:
    kind: str  # one of OCCLUDER_KINDS
    location: tuple[float, float, float]
    rotation: tuple[float, float, float]  # XYZ Euler, radians
    scale: tuple[float, float, float]
    material: MaterialSpec
    in_frame: bool  # placed inside the camera frustum (visible), else only casts a shadow
    shape_seed: int = 0  # vertex displacement of irregular "blob" shapes


@dataclass
class FrameSpec:
    lights: list[LightSpec]
    occluders: list[OccluderSpec]
    ambient: float  # world background strength (soft fill light)
    cycles_seed: int  # Cycles' sampling seed for this image: differs per image (GUIDE section 2)


@dataclass
class SequenceSpec:
    sequence_id: int
    seed: int
    cover_index: int  # index into the cover source (a folder list, or a procedural cover seed)
    roughness: float  # cover surface glossiness, per sequence
    specular: float  # Principled "IOR level"-style specular strength
    lighting_group: int = 0  # sequences of one group share lights, occluders and surface
    attempt: int = 0  # QA re-render count (0: first render)
    occluder_covers: list[int] = field(default_factory=list)  # cover indices that texture occluders
    frames: list[FrameSpec] = field(default_factory=list)
    relief: ReliefSpec = field(default_factory=ReliefSpec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SequenceSpec:
        frames = []
        for fr in d["frames"]:
            lights = [LightSpec(**{**lt, "position": tuple(lt["position"]), "color": tuple(lt["color"])}) for lt in fr["lights"]]
            occs = []
            for oc in fr["occluders"]:
                mat = MaterialSpec(**{**oc["material"], "color": tuple(oc["material"]["color"])})
                occs.append(OccluderSpec(**{**oc, "material": mat, "location": tuple(oc["location"]),
                                            "rotation": tuple(oc["rotation"]), "scale": tuple(oc["scale"])}))
            frames.append(FrameSpec(lights=lights, occluders=occs, ambient=fr["ambient"], cycles_seed=fr["cycles_seed"]))
        relief = ReliefSpec(**d["relief"]) if "relief" in d else ReliefSpec()
        return cls(**{**d, "frames": frames, "relief": relief})


_COVER_STREAM = 1  # third key word of the cover choice, apart from the lighting's two-word key
# Four-word keys [seed, group, stream, 1 + attempt]: their length keeps them apart from the two-
# and three-word keys above, so adding them left every earlier draw unchanged.
_RELIEF_STREAM = 5


def lighting_rng(seed: int, group: int, attempt: int = 0) -> np.random.Generator:
    """The counter-based RNG of one lighting group. `attempt` > 0: the sub-seed of a QA re-render
    (its key [seed, group, 1 + attempt] never meets the cover key [seed, id, 1])."""
    key = [int(seed), int(group)] if attempt == 0 else [int(seed), int(group), 1 + int(attempt)]
    return np.random.default_rng(key)


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _light_color(rng: np.random.Generator, tint_prob: float = 0.2, tint_min: float = 0.6) -> tuple[float, float, float]:
    # Mostly warm-to-cool whites, sometimes a stronger tint, as lamps and daylight are.
    temperature = rng.uniform(-1.0, 1.0)
    tint = np.array([1.0 + 0.25 * temperature, 1.0, 1.0 - 0.25 * temperature])
    if rng.random() < tint_prob:
        tint = tint * rng.uniform(tint_min, 1.0, size=3)
    tint = tint / tint.max()
    return tuple(float(c) for c in tint)


def sample_light(rng: np.random.Generator, s: SceneConfig, share: float = 1.0) -> LightSpec:
    """One point light; `share` of the frame's brightness budget (lights split it, like a camera
    exposing for the whole scene)."""
    x, y = rng.uniform(-s.light_spread, s.light_spread, size=2)
    z = _uniform(rng, s.light_height)
    # Power scales with squared distance to the plane centre so brightness stays in range wherever
    # the light is. A point light of power P gives a white Lambertian surface the radiance
    # P cos / (4 pi^2 d^2) in Cycles, so "1.0" below lands the centre at exactly white.
    d2 = x * x + y * y + z * z
    cos = z / math.sqrt(d2)
    power = share * _uniform(rng, s.light_irradiance) * 4.0 * math.pi**2 * d2 / max(cos, 0.25)
    color = _light_color(rng, s.light_tint_prob, s.light_tint_min)
    return LightSpec(position=(float(x), float(y), float(z)), power=float(power), color=color,
                     radius=_uniform(rng, s.light_radius))


def sample_material(rng: np.random.Generator, num_occluder_covers: int, kinds: list[str] | None = None) -> MaterialSpec:
    """`kinds`: draw uniformly from these; None: the original solid / noise / cover mix."""
    if kinds is None:
        kinds = MATERIAL_KINDS[:3] if num_occluder_covers > 0 else MATERIAL_KINDS[:2]
        kind = str(rng.choice(kinds, p=[0.45, 0.35, 0.2] if len(kinds) == 3 else [0.55, 0.45]))
    else:
        usable = [k for k in kinds if k != "cover" or num_occluder_covers > 0] or ["solid"]
        kind = str(usable[int(rng.integers(len(usable)))])
    color = tuple(float(c) for c in rng.uniform(0.02, 0.9, size=3))
    return MaterialSpec(
        kind=kind,
        color=color,
        roughness=float(rng.uniform(0.2, 0.9)),
        pattern_scale=float(rng.uniform(2.0, 15.0)),
        pattern_seed=float(rng.uniform(0, 100)),
        cover_index=int(rng.integers(num_occluder_covers)) if kind == "cover" else -1,
    )


def _frustum_half_width(z: float) -> float:
    return PLANE_HALF * (CAMERA_HEIGHT - z) / CAMERA_HEIGHT


def sample_occluder(rng: np.random.Generator, s: SceneConfig, lights: list[LightSpec], num_occluder_covers: int) -> OccluderSpec:
    """An occluder on the segment between a light and a point of the plane, so it always casts a
    shadow toward the cover; whether it is also visible depends on where that lands. With
    `s.occluder_height` set: an occluder in view instead (`sample_occluder_in_view`)."""
    if s.occluder_height is not None:
        return sample_occluder_in_view(rng, s, lights, num_occluder_covers)
    light = lights[int(rng.integers(len(lights)))]
    target = np.array([*rng.uniform(-0.55, 0.55, size=2), 0.0])
    t = rng.uniform(0.15, 0.75)
    location = target + t * (np.array(light.position) - target)
    location[2] = min(location[2], CAMERA_HEIGHT * 0.6)  # never so close to the lens it fills the frame
    size = _uniform(rng, s.occluder_size)
    kind = str(rng.choice(OCCLUDER_KINDS))
    scale = size * rng.uniform(0.5, 1.5, size=3)
    if kind == "rod":  # thin and long: pens, cables, fingers
        scale = np.array([size * 0.12, size * 0.12, size * rng.uniform(2.5, 5.0)])
    extent = float(np.max(scale))
    half = _frustum_half_width(float(location[2]))
    in_frame = bool(abs(location[0]) < half + extent and abs(location[1]) < half + extent)
    return OccluderSpec(
        kind=kind,
        location=tuple(float(v) for v in location),
        rotation=tuple(float(v) for v in rng.uniform(0, 2 * math.pi, size=3)),
        scale=tuple(float(v) for v in scale),
        material=sample_material(rng, num_occluder_covers),
        in_frame=in_frame,
        shape_seed=int(rng.integers(2**31)),
    )


def _occluder_scale(rng: np.random.Generator, kind: str, size: float) -> np.ndarray:
    if kind == "rod":  # thin and long: pens, cables, fingers
        return np.array([size * 0.12, size * 0.12, size * rng.uniform(2.5, 5.0)])
    return size * rng.uniform(0.5, 1.5, size=3)


def sample_occluder_in_view(rng: np.random.Generator, s: SceneConfig, lights: list[LightSpec], num_occluder_covers: int) -> OccluderSpec:
    """An occluder seen by the camera, as the paper's are: at a height drawn from
    `s.occluder_height`, its largest side `s.occluder_frame_fraction` of the frame width seen at
    that height (so a close object fills a third to half of the photo), centred anywhere in view.
    It shades the cover where the lights above it throw its shadow; it is kept below every light
    so that no light ends up inside it."""
    z = _uniform(rng, s.occluder_height)
    kind = str(rng.choice(OCCLUDER_KINDS))
    size = _uniform(rng, s.occluder_frame_fraction) * 2.0 * _frustum_half_width(z)
    if kind == "rod":  # its long side spans the fraction; the unit rod is 1 long before scaling
        size = size / 4.0
    scale = _occluder_scale(rng, kind, size)
    half = _frustum_half_width(z)
    x, y = rng.uniform(-half, half, size=2)
    extent = float(np.max(scale))
    lowest_light = min(lt.position[2] for lt in lights)
    z = float(min(z, max(0.5 * extent, lowest_light - 0.6 * extent)))
    return OccluderSpec(
        kind=kind,
        location=(float(x), float(y), z),
        rotation=tuple(float(v) for v in rng.uniform(0, 2 * math.pi, size=3)),
        scale=tuple(float(v) for v in scale),
        material=sample_material(rng, num_occluder_covers, s.occluder_materials),
        in_frame=True,
        shape_seed=int(rng.integers(2**31)),
    )


def sample_relief(seed: int, group: int, attempt: int, s: SceneConfig) -> ReliefSpec:
    """The cover surface of a lighting group (its own stream: the original draws stay unchanged)."""
    if s.relief_strength[1] <= 0.0 and s.coat[1] <= 0.0:
        return ReliefSpec()
    rng = np.random.default_rng([int(seed), int(group), _RELIEF_STREAM, 1 + int(attempt)])
    return ReliefSpec(
        strength=_uniform(rng, s.relief_strength),
        grain_scale=_uniform(rng, s.relief_grain_scale),
        wave_scale=_uniform(rng, s.relief_wave_scale),
        wrinkles=float(rng.uniform(0.3, 1.0)) if rng.random() < s.relief_wrinkle_prob else 0.0,
        seed=float(rng.uniform(0, 100)),
        coat=_uniform(rng, s.coat),
        coat_roughness=_uniform(rng, s.coat_roughness),
    )


def sample_frame(rng: np.random.Generator, s: SceneConfig, num_occluder_covers: int,
                 fixed: LightSpec | None = None) -> FrameSpec:
    """One image's lights, occluders and fill. `fixed`: the sequence's fixed light, which comes
    first in every image and keeps `s.light_fixed_share` of the brightness; the moving lights split
    the rest."""
    n_lights = int(rng.integers(s.lights_min, s.lights_max + 1))
    moving_share = 1.0 - s.light_fixed_share if fixed is not None else 1.0
    lights = [sample_light(rng, s, moving_share / n_lights) for _ in range(n_lights)]
    if fixed is not None:
        lights = [LightSpec(position=fixed.position, power=fixed.power, color=fixed.color, radius=fixed.radius), *lights]
    n_occ = 0 if rng.random() < s.occluder_free_frame_prob else int(rng.integers(s.occluders_min, max(s.occluders_min, s.occluders_max) + 1))
    occluders = [sample_occluder(rng, s, lights, num_occluder_covers) for _ in range(n_occ)]
    return FrameSpec(lights=lights, occluders=occluders, ambient=_uniform(rng, s.ambient),
                     cycles_seed=int(rng.integers(2**31)))


def sample_sequence(seed: int, sequence_id: int, sequence_length: int, num_covers: int, sampling: SceneConfig,
                    covers_per_lighting: int = 1, attempt: int = 0) -> SequenceSpec:
    """The full description of sequence `sequence_id`: a pure function of its arguments.

    Lights, occluders and surface come from the sequence's lighting group
    (`sequence_id // covers_per_lighting`), so in fast mode one lighting render serves that many
    covers; the cover comes from the sequence's own key. `attempt` > 0 draws a new lighting for a
    sequence whose render failed QA.
    """
    group = sequence_id // covers_per_lighting
    rng = lighting_rng(seed, group, attempt)
    spec = SequenceSpec(
        sequence_id=int(sequence_id),
        seed=int(seed),
        cover_index=int(np.random.default_rng([int(seed), int(sequence_id), _COVER_STREAM]).integers(num_covers)),
        roughness=_uniform(rng, sampling.roughness),
        specular=_uniform(rng, sampling.specular),
        lighting_group=int(group),
        attempt=int(attempt),
        occluder_covers=[int(c) for c in rng.integers(num_covers, size=sampling.occluder_covers)],
    )
    # Drawn only when asked for, so presets without a fixed light keep every earlier draw.
    fixed = sample_light(rng, sampling, sampling.light_fixed_share) if sampling.light_fixed_share > 0 else None
    spec.frames = [sample_frame(rng, sampling, sampling.occluder_covers, fixed) for _ in range(sequence_length)]
    spec.relief = sample_relief(seed, group, attempt, sampling)
    return spec
