"""Build and update the Blender scene from plain dicts (the generator's SceneSpec, serialised).

The scene is built once per worker; per image only the lights and occluders are replaced, and
per sequence the cover texture and the surface. Everything bpy-specific lives here and in
`render.py`; no other package imports bpy.
"""

from __future__ import annotations

import math
from typing import Any

import bmesh

# bmesh becomes importable only once bpy is loaded, hence this order.
import bpy  # noqa: I001
import numpy as np

from blender_scenes import materials

PLANE_INDEX = 1
PLANE_AOV = "plane"  # shader AOV written only by the cover plane: its anti-aliased coverage
_TRANSIENT = "drs_transient"  # collection holding per-image lights and occluders


def build_base_scene(resolution: int, camera_height: float, camera_fov: float, threads: int) -> None:
    """Empty the file and create camera, cover plane, world and the transient collection."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.render.resolution_x = scene.render.resolution_y = resolution
    scene.render.resolution_percentage = 100
    scene.render.threads_mode = "FIXED" if threads > 0 else "AUTO"
    if threads > 0:
        scene.render.threads = threads
    # No persistent data: with it, Cycles keeps images across renders keyed by their datablock,
    # and a texture created where a freed one lived was sometimes rendered with the old pixels,
    # which broke bit-for-bit regeneration (seen in 1 of 3 runs). Re-syncing these tiny scenes
    # costs no measurable time.
    scene.render.use_persistent_data = False
    # A box filter one pixel wide integrates exactly the pixel's footprint; with a texture at render
    # resolution and closest-texel lookup, each pixel then sees exactly one texel: pixel alignment.
    scene.cycles.pixel_filter_type = "BOX"
    scene.cycles.filter_width = 1.0
    scene.cycles.use_animated_seed = False
    scene.view_settings.view_transform = "Standard"

    cam_data = bpy.data.cameras.new("camera")
    cam_data.type = "PERSP"
    cam_data.sensor_fit = "AUTO"
    cam_data.angle = camera_fov
    cam_data.clip_start = 0.01
    camera = bpy.data.objects.new("camera", cam_data)
    camera.location = (0.0, 0.0, camera_height)
    scene.collection.objects.link(camera)
    scene.camera = camera

    _build_plane(scene)
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    scene.world = world
    transient = bpy.data.collections.new(_TRANSIENT)
    scene.collection.children.link(transient)


def _build_plane(scene: bpy.types.Scene) -> None:
    mesh = bpy.data.meshes.new("cover")
    h = 0.5  # generator.scene_spec.PLANE_HALF: the plane spans [-h, h]^2 at z = 0
    mesh.from_pydata([(-h, -h, 0.0), (h, -h, 0.0), (h, h, 0.0), (-h, h, 0.0)], [], [(0, 1, 2, 3)])
    uv = mesh.uv_layers.new(name="UVMap")
    for loop, coord in zip(mesh.loops, [(0, 0), (1, 0), (1, 1), (0, 1)], strict=True):
        uv.data[loop.index].uv = coord
    plane = bpy.data.objects.new("cover", mesh)
    plane.pass_index = PLANE_INDEX
    scene.collection.objects.link(plane)

    mat = bpy.data.materials.new("cover")
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    tex = nodes.new("ShaderNodeTexImage")
    tex.name = "cover_texture"
    tex.interpolation = "Closest"
    tex.extension = "EXTEND"
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    aov = nodes.new("ShaderNodeOutputAOV")
    aov.aov_name = PLANE_AOV
    aov.inputs["Value"].default_value = 1.0
    materials.build_cover_relief(mat)
    mesh.materials.append(mat)


def set_cover(linear_rgb: np.ndarray | None, roughness: float, specular: float, albedo: float = 1.0,
              relief: dict[str, Any] | None = None) -> None:
    """Texture the plane with `linear_rgb` (H, W, 3) float32, row 0 = top; None = plain grey of
    `albedo` (the fast path renders lighting on grey and composites the cover in NumPy; a grey
    near the covers' mean keeps the light the cover bounces onto occluders about right).
    `relief`: the surface's bump map and coat (ReliefSpec as a dict); None: flat."""
    mat = bpy.data.materials["cover"]
    materials.set_relief(mat, relief)
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    tex = mat.node_tree.nodes["cover_texture"]
    bsdf.inputs["Roughness"].default_value = roughness
    bsdf.inputs["Specular IOR Level"].default_value = specular
    old = tex.image
    tex.image = None if linear_rgb is None else image_from_array("cover_image", linear_rgb)
    if linear_rgb is None:
        bsdf.inputs["Base Color"].default_value = (albedo, albedo, albedo, 1.0)
        for link in list(mat.node_tree.links):
            if link.to_socket == bsdf.inputs["Base Color"]:
                mat.node_tree.links.remove(link)
    elif not bsdf.inputs["Base Color"].is_linked:
        mat.node_tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    if old is not None:
        bpy.data.images.remove(old)


def image_from_array(name: str, linear_rgb: np.ndarray) -> bpy.types.Image:
    """A float image datablock holding linear RGB (H, W, 3), row 0 = top of the picture."""
    h, w, _ = linear_rgb.shape
    img = bpy.data.images.new(name, width=w, height=h, alpha=False, float_buffer=True)
    img.colorspace_settings.name = "Linear Rec.709"
    rgba = np.ones((h, w, 4), dtype=np.float32)
    rgba[..., :3] = linear_rgb[::-1]  # Blender stores rows bottom-up
    img.pixels.foreach_set(rgba.ravel())
    return img


# ----------------------------------------------------------------------------------------------
# per image: lights, occluders, world


def clear_transient() -> None:
    coll = bpy.data.collections[_TRANSIENT]
    for obj in list(coll.objects):
        data = obj.data
        bpy.data.objects.remove(obj, do_unlink=True)
        if isinstance(data, bpy.types.Mesh):
            bpy.data.meshes.remove(data)
        elif isinstance(data, bpy.types.Light):
            bpy.data.lights.remove(data)
    for mat in list(bpy.data.materials):
        if mat.name.startswith("occ_") and mat.users == 0:
            bpy.data.materials.remove(mat)
    for img in list(bpy.data.images):
        if img.name.startswith("occ_cover") and img.users == 0:
            bpy.data.images.remove(img)


def set_frame(frame: dict[str, Any], occluder_covers: list[np.ndarray], seed_salt: int = 0) -> None:
    """Replace lights and occluders with those of one FrameSpec (as a dict). `seed_salt` shifts
    Cycles' sampling seed: the same scene with an independent noise pattern."""
    clear_transient()
    coll = bpy.data.collections[_TRANSIENT]
    for i, light in enumerate(frame["lights"]):
        data = bpy.data.lights.new(f"light_{i}", "POINT")
        data.energy = light["power"]
        data.color = light["color"]
        data.shadow_soft_size = light["radius"]
        obj = bpy.data.objects.new(f"light_{i}", data)
        obj.location = light["position"]
        coll.objects.link(obj)
    for i, occ in enumerate(frame["occluders"]):
        obj = _make_occluder(i, occ, occluder_covers)
        coll.objects.link(obj)
    bg = bpy.context.scene.world.node_tree.nodes["Background"]
    bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    bg.inputs["Strength"].default_value = frame["ambient"]
    bpy.context.scene.cycles.seed = (frame["cycles_seed"] + seed_salt) % 2**31


def _make_occluder(i: int, occ: dict[str, Any], occluder_covers: list[np.ndarray]) -> bpy.types.Object:
    mesh = bpy.data.meshes.new(f"occ_{i}")
    bm = bmesh.new()
    kind = occ["kind"]
    if kind == "cube":
        bmesh.ops.create_cube(bm, size=1.0)
    elif kind in ("sphere", "blob"):
        bmesh.ops.create_icosphere(bm, subdivisions=3, radius=0.5)
        if kind == "blob":  # irregular: low-frequency random displacement along the normal
            rng = np.random.default_rng(occ["shape_seed"])
            waves = rng.normal(size=(4, 3))
            phases = rng.uniform(0, 2 * math.pi, size=4)
            for v in bm.verts:
                p = np.array(v.co)
                bump = 1.0 + 0.35 * np.tanh(np.sum(np.sin(waves @ p * 4.0 + phases)) / 2.0)
                v.co = (p * bump).tolist()
    elif kind in ("cylinder", "rod"):
        bmesh.ops.create_cone(bm, cap_ends=True, segments=24, radius1=0.5, radius2=0.5, depth=1.0)
    elif kind == "cone":
        bmesh.ops.create_cone(bm, cap_ends=True, segments=24, radius1=0.5, radius2=0.0, depth=1.0)
    elif kind in ("torus", "ring"):
        _create_torus(bm, major=0.5, minor=0.18 if kind == "torus" else 0.06)
    else:
        raise ValueError(f"unknown occluder kind {kind!r}")
    bmesh.ops.recalc_face_normals(bm, faces=bm.faces)
    bm.to_mesh(mesh)
    bm.free()
    for poly in mesh.polygons:
        poly.use_smooth = kind not in ("cube",)
    obj = bpy.data.objects.new(f"occ_{i}", mesh)
    obj.location = occ["location"]
    obj.rotation_euler = occ["rotation"]
    obj.scale = occ["scale"]
    obj.pass_index = PLANE_INDEX + 1 + i
    mesh.materials.append(_make_material(i, occ["material"], occluder_covers))
    return obj


def _create_torus(bm: bmesh.types.BMesh, major: float, minor: float, n_major: int = 32, n_minor: int = 12) -> None:
    verts = []
    for a in range(n_major):
        u = 2 * math.pi * a / n_major
        for b in range(n_minor):
            v = 2 * math.pi * b / n_minor
            r = major + minor * math.cos(v)
            verts.append(bm.verts.new((r * math.cos(u), r * math.sin(u), minor * math.sin(v))))
    for a in range(n_major):
        for b in range(n_minor):
            i0 = a * n_minor + b
            i1 = ((a + 1) % n_major) * n_minor + b
            i2 = ((a + 1) % n_major) * n_minor + (b + 1) % n_minor
            i3 = a * n_minor + (b + 1) % n_minor
            bm.faces.new((verts[i0], verts[i1], verts[i2], verts[i3]))


def _make_material(i: int, spec: dict[str, Any], occluder_covers: list[np.ndarray]) -> bpy.types.Material:
    mat = bpy.data.materials.new(f"occ_{i}")
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = spec["roughness"]
    color = (*spec["color"], 1.0)
    bsdf.inputs["Base Color"].default_value = color
    if materials.textured(mat, spec):
        return mat
    coords = nodes.new("ShaderNodeTexCoord")
    if spec["kind"] == "procedural":
        noise = nodes.new("ShaderNodeTexNoise")
        noise.noise_dimensions = "4D"  # before touching "W": the socket exists only in 4D
        noise.inputs["Scale"].default_value = spec["pattern_scale"]
        noise.inputs["W"].default_value = spec["pattern_seed"]
        links.new(coords.outputs["Object"], noise.inputs["Vector"])
        ramp = nodes.new("ShaderNodeValToRGB")
        ramp.color_ramp.elements[0].color = color
        ramp.color_ramp.elements[1].color = (*[1.0 - c for c in spec["color"]], 1.0)
        links.new(noise.outputs["Fac"], ramp.inputs["Fac"])
        links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
    elif spec["kind"] == "cover" and occluder_covers:
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = image_from_array(f"occ_cover_{i}", occluder_covers[spec["cover_index"] % len(occluder_covers)])
        tex.projection = "BOX"
        links.new(coords.outputs["Object"], tex.inputs["Vector"])
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return mat
