"""Shader node graphs: the cover's relief (bump map, laminate coat) and textured occluder materials.

The cover keeps its flat albedo (the training target); only its normal is perturbed, so lamps
spread into broad wavy sheens and the shading ripples, as on a real printed and laminated cover.
Relief heights are built once per worker and re-weighted per sequence (`set_relief`), so changing
the relief costs no node-tree rebuild.

Occluder textures are procedural (no image files): wood rings, marble veins, ridged bark, woven
strips, cracked clay, twisted rope; each also drives a bump map so it reads as a material, not a
print. Texture coordinates are the object's own, so the pattern moves with the occluder.
"""

from __future__ import annotations

import math
from typing import Any

import bpy

# Node names in the cover material; set_relief finds them by name.
_GRAIN, _WAVE, _WRINKLE = "relief_grain", "relief_wave", "relief_wrinkle"
_W_GRAIN, _W_WAVE, _W_WRINKLE = "relief_w_grain", "relief_w_wave", "relief_w_wrinkle"
_BUMP, _COAT_BUMP = "relief_bump", "relief_coat_bump"


def _math(nodes, links, op: str, a, b: float | None = None, name: str | None = None):
    node = nodes.new("ShaderNodeMath")
    node.operation = op
    if name:
        node.name = name
    links.new(a, node.inputs[0])
    if b is not None:
        node.inputs[1].default_value = b
    return node


def build_cover_relief(mat: bpy.types.Material) -> None:
    """Add grain, wave and wrinkle height fields and two bump nodes to the cover material.

    Height (metres) = w_grain * grain + w_wave * wave + w_wrinkle * |wrinkle - 0.5|, each a noise
    over UV (1 UV unit = the 1 m cover); the weights start at 0 (a flat plane)."""
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    uv = nodes.new("ShaderNodeTexCoord")
    fields = {}
    for name, detail, distortion in ((_GRAIN, 1.0, 0.0), (_WAVE, 2.0, 0.3), (_WRINKLE, 4.0, 1.5)):
        noise = nodes.new("ShaderNodeTexNoise")
        noise.name = name
        noise.noise_dimensions = "4D"  # "W" is the per-sequence seed
        noise.inputs["Detail"].default_value = detail
        noise.inputs["Distortion"].default_value = distortion
        links.new(uv.outputs["UV"], noise.inputs["Vector"])
        fields[name] = noise.outputs["Fac"]
    # A crease is where the wrinkle noise crosses its mean: |n - 0.5| is V-shaped there.
    crease = _math(nodes, links, "ABSOLUTE", _math(nodes, links, "SUBTRACT", fields[_WRINKLE], 0.5).outputs[0])
    grain = _math(nodes, links, "MULTIPLY", fields[_GRAIN], 0.0, _W_GRAIN)
    wave = _math(nodes, links, "MULTIPLY", fields[_WAVE], 0.0, _W_WAVE)
    wrinkle = _math(nodes, links, "MULTIPLY", crease.outputs[0], 0.0, _W_WRINKLE)
    partial = _math(nodes, links, "ADD", grain.outputs[0])
    links.new(wave.outputs[0], partial.inputs[1])
    total = _math(nodes, links, "ADD", partial.outputs[0])
    links.new(wrinkle.outputs[0], total.inputs[1])
    for name, height, target in ((_BUMP, total.outputs[0], "Normal"), (_COAT_BUMP, wave.outputs[0], "Coat Normal")):
        bump = nodes.new("ShaderNodeBump")
        bump.name = name
        bump.inputs["Distance"].default_value = 1.0
        bump.inputs["Strength"].default_value = 1.0
        links.new(height, bump.inputs["Height"])
        links.new(bump.outputs["Normal"], bsdf.inputs[target])


def set_relief(mat: bpy.types.Material, relief: dict[str, Any] | None) -> None:
    """Weight the height fields for one sequence (generator.scene_spec.ReliefSpec as a dict).

    A noise of frequency f (per metre) and amplitude a has slopes of about 2 pi f a, so each weight
    is strength / (2 pi f): `strength` is the typical surface tilt in radians, whatever the scale."""
    nodes = mat.node_tree.nodes
    bsdf = nodes["Principled BSDF"]
    relief = relief or {}
    strength = float(relief.get("strength", 0.0))
    scales = {_GRAIN: relief.get("grain_scale", 200.0), _WAVE: relief.get("wave_scale", 3.0),
              _WRINKLE: 2.0 * relief.get("wave_scale", 3.0)}
    share = {_GRAIN: 0.35, _WAVE: 1.0, _WRINKLE: float(relief.get("wrinkles", 0.0))}
    weights = {_GRAIN: _W_GRAIN, _WAVE: _W_WAVE, _WRINKLE: _W_WRINKLE}
    for name, scale in scales.items():
        noise = nodes[name]
        noise.inputs["Scale"].default_value = scale
        noise.inputs["W"].default_value = float(relief.get("seed", 0.0)) + len(name)
        nodes[weights[name]].inputs[1].default_value = strength * share[name] / (2.0 * math.pi * scale)
    on = strength > 0.0
    # A flat plane must render exactly as before the relief existed: disconnect, not just zero.
    _connect(mat, nodes[_BUMP].outputs["Normal"], bsdf.inputs["Normal"], on)
    coat = float(relief.get("coat", 0.0))
    bsdf.inputs["Coat Weight"].default_value = coat
    bsdf.inputs["Coat Roughness"].default_value = float(relief.get("coat_roughness", 0.1))
    _connect(mat, nodes[_COAT_BUMP].outputs["Normal"], bsdf.inputs["Coat Normal"], on and coat > 0.0)


def _connect(mat: bpy.types.Material, out, inp, on: bool) -> None:
    links = mat.node_tree.links
    for link in list(inp.links):
        links.remove(link)
    if on:
        links.new(out, inp)


# ----------------------------------------------------------------------------------------------
# occluder materials

_BASE_COLOURS = {  # linear RGB pairs (dark, light) before the per-occluder tint
    "wood": ((0.12, 0.05, 0.015), (0.45, 0.25, 0.09)),
    "marble": ((0.25, 0.25, 0.27), (0.85, 0.84, 0.8)),
    "bark": ((0.03, 0.025, 0.02), (0.22, 0.17, 0.12)),
    "woven": ((0.1, 0.07, 0.04), (0.6, 0.45, 0.25)),
    "clay": ((0.08, 0.04, 0.02), (0.55, 0.3, 0.16)),
    "rope": ((0.18, 0.13, 0.07), (0.6, 0.5, 0.32)),
}


def textured(mat: bpy.types.Material, spec: dict[str, Any]) -> bool:
    """Give `mat` the procedural texture `spec["kind"]` names; False when the kind is not one of
    the textured kinds above. Colours: the kind's own pair, pulled 30 % toward the spec's colour."""
    kind = spec["kind"]
    if kind not in _BASE_COLOURS:
        return False
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    coords = nodes.new("ShaderNodeTexCoord")
    mapping = nodes.new("ShaderNodeMapping")
    links.new(coords.outputs["Object"], mapping.inputs["Vector"])
    mapping.inputs["Location"].default_value = (spec["pattern_seed"],) * 3
    vec = mapping.outputs["Vector"]
    scale = spec["pattern_scale"]
    fac = _pattern(nodes, links, kind, vec, scale, mapping)
    ramp = nodes.new("ShaderNodeValToRGB")
    tint = spec["color"]
    dark, light = (tuple(0.7 * c + 0.3 * t * (0.4 if i == 0 else 1.0) for c, t in zip(pair, tint, strict=True))
                   for i, pair in enumerate(_BASE_COLOURS[kind]))
    ramp.color_ramp.elements[0].color = (*dark, 1.0)
    ramp.color_ramp.elements[1].color = (*light, 1.0)
    links.new(fac, ramp.inputs["Fac"])
    links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
    bump = nodes.new("ShaderNodeBump")
    bump.inputs["Strength"].default_value = 0.6
    bump.inputs["Distance"].default_value = 0.02
    links.new(fac, bump.inputs["Height"])
    links.new(bump.outputs["Normal"], bsdf.inputs["Normal"])
    return True


def _pattern(nodes, links, kind: str, vec, scale: float, mapping) -> Any:
    """A scalar field in [0, 1] with the look of `kind` (node output socket)."""
    if kind == "wood":  # growth rings around z, wobbly
        wave = nodes.new("ShaderNodeTexWave")
        wave.wave_type = "RINGS"
        wave.rings_direction = "Z"
        wave.wave_profile = "SAW"
        wave.inputs["Scale"].default_value = scale * 0.6
        wave.inputs["Distortion"].default_value = 4.0
        wave.inputs["Detail"].default_value = 3.0
        links.new(vec, wave.inputs["Vector"])
        return wave.outputs["Fac"]
    if kind == "marble":  # thin dark veins through a light stone
        wave = nodes.new("ShaderNodeTexWave")
        wave.bands_direction = "DIAGONAL"
        wave.inputs["Scale"].default_value = scale * 0.3
        wave.inputs["Distortion"].default_value = 12.0
        wave.inputs["Detail"].default_value = 6.0
        links.new(vec, wave.inputs["Vector"])
        veins = _math(nodes, links, "POWER", wave.outputs["Fac"], 0.25)
        return veins.outputs[0]
    if kind == "bark":  # vertical ridged furrows
        mapping.inputs["Scale"].default_value = (1.0, 1.0, 0.2)
        noise = nodes.new("ShaderNodeTexNoise")
        noise.noise_type = "RIDGED_MULTIFRACTAL"
        noise.inputs["Scale"].default_value = scale * 1.5
        noise.inputs["Detail"].default_value = 6.0
        links.new(vec, noise.inputs["Vector"])
        return noise.outputs["Fac"]
    if kind == "woven":  # over-under strips: two band textures picked by a checker
        bands = []
        for direction in ("X", "Y"):
            wave = nodes.new("ShaderNodeTexWave")
            wave.bands_direction = direction
            wave.wave_profile = "TRI"
            wave.inputs["Scale"].default_value = scale * 1.5
            links.new(vec, wave.inputs["Vector"])
            bands.append(wave.outputs["Fac"])
        checker = nodes.new("ShaderNodeTexChecker")
        checker.inputs["Scale"].default_value = scale * 1.5
        links.new(vec, checker.inputs["Vector"])
        mix = nodes.new("ShaderNodeMix")
        mix.data_type = "FLOAT"
        links.new(checker.outputs["Fac"], mix.inputs["Factor"])
        links.new(bands[0], mix.inputs["A"])
        links.new(bands[1], mix.inputs["B"])
        return mix.outputs["Result"]
    if kind == "clay":  # cells parted by dark cracks
        vor = nodes.new("ShaderNodeTexVoronoi")
        vor.feature = "DISTANCE_TO_EDGE"
        vor.inputs["Scale"].default_value = scale
        links.new(vec, vor.inputs["Vector"])
        return _math(nodes, links, "POWER", _math(nodes, links, "MULTIPLY", vor.outputs["Distance"], 6.0).outputs[0], 0.3).outputs[0]
    # rope: twisted strands, diagonal saw bands with a little fibre noise
    wave = nodes.new("ShaderNodeTexWave")
    wave.bands_direction = "DIAGONAL"
    wave.wave_profile = "SAW"
    wave.inputs["Scale"].default_value = scale * 2.0
    wave.inputs["Distortion"].default_value = 1.5
    wave.inputs["Detail"].default_value = 8.0
    links.new(vec, wave.inputs["Vector"])
    return wave.outputs["Fac"]
