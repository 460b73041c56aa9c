"""Render settings, device selection and reading render passes back as NumPy arrays.

Passes come back through the compositor's File Output node as uncompressed float EXR files in a
scratch directory, then are loaded with Blender's own image reader (no extra EXR library).
All arrays are linear, (H, W) or (H, W, 3) float32, row 0 = top of the image.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from blender_scenes.scene import PLANE_AOV

log = logging.getLogger(__name__)

# The passes the generator composites from (generator/composite.py documents their meaning).
PASSES = ("image", "diffuse_light", "diffuse_color", "plane")


def configure_cycles(samples: int, max_bounces: int, denoise: bool, adaptive_threshold: float) -> None:
    scene = bpy.context.scene
    cyc = scene.cycles
    cyc.samples = samples
    cyc.use_adaptive_sampling = adaptive_threshold > 0
    if adaptive_threshold > 0:
        cyc.adaptive_threshold = adaptive_threshold
    cyc.max_bounces = max_bounces
    cyc.diffuse_bounces = min(max_bounces, cyc.diffuse_bounces)
    cyc.glossy_bounces = min(max_bounces, cyc.glossy_bounces)
    cyc.transmission_bounces = min(max_bounces, cyc.transmission_bounces)
    cyc.caustics_reflective = False
    cyc.caustics_refractive = False
    cyc.use_denoising = denoise
    if denoise:
        cyc.denoiser = "OPENIMAGEDENOISE"
        cyc.denoising_input_passes = "RGB_ALBEDO_NORMAL"
        # OIDN's fast mode costs a third of its default here and still lands ~40 dB from the
        # reference at 256 px (benchmarks/render_throughput.py measures it).
        cyc.denoising_quality = "FAST"
        cyc.denoising_prefilter = "FAST"
    vl = scene.view_layers[0]
    vl.cycles.denoising_store_passes = denoise


def select_device(preferred: str) -> str:
    """Enable a GPU backend when asked and present ("auto" tries OptiX then CUDA); returns the
    device actually used ("CPU", "CUDA", "OPTIX", ...), which the caller logs and records."""
    scene = bpy.context.scene
    if preferred.upper() == "CPU":
        scene.cycles.device = "CPU"
        return "CPU"
    prefs = bpy.context.preferences.addons["cycles"].preferences
    candidates = ["OPTIX", "CUDA", "HIP", "ONEAPI", "METAL"] if preferred.lower() == "auto" else [preferred.upper()]
    for backend in candidates:
        try:
            prefs.compute_device_type = backend
            prefs.get_devices()
        except (TypeError, ValueError):
            continue
        gpus = [d for d in prefs.devices if d.type == backend]
        if gpus:
            for d in prefs.devices:
                d.use = d.type == backend
            scene.cycles.device = "GPU"
            return backend
    log.warning("no %s GPU usable by Cycles; rendering on the CPU", preferred)
    scene.cycles.device = "CPU"
    return "CPU"


def setup_outputs(scratch: str | os.PathLike, denoise_light: bool) -> None:
    """Wire render passes to one File Output node: one EXR per pass in `scratch`."""
    scene = bpy.context.scene
    vl = scene.view_layers[0]
    for flag in ("use_pass_diffuse_direct", "use_pass_diffuse_indirect", "use_pass_diffuse_color"):
        setattr(vl, flag, True)
    if PLANE_AOV not in vl.aovs:
        aov = vl.aovs.add()
        aov.name = PLANE_AOV
        aov.type = "VALUE"
    scene.use_nodes = True
    scene.render.use_compositing = True
    tree = scene.node_tree
    for node in list(tree.nodes):
        if node.bl_idname != "CompositorNodeRLayers":
            tree.nodes.remove(node)
    rl = tree.nodes["Render Layers"]
    out = tree.nodes.new("CompositorNodeOutputFile")
    out.base_path = str(scratch)
    out.format.file_format = "OPEN_EXR"
    out.format.color_depth = "32"
    out.format.exr_codec = "NONE"
    out.file_slots.clear()
    links = tree.links

    def add(a, b):
        node = tree.nodes.new("CompositorNodeMixRGB")
        node.blend_type = "ADD"
        node.inputs[0].default_value = 1.0
        links.new(a, node.inputs[1])
        links.new(b, node.inputs[2])
        return node.outputs[0]

    light = add(rl.outputs["DiffDir"], rl.outputs["DiffInd"])
    if denoise_light:
        # Lighting on a flat plane is smooth except at shadow edges: the denoiser, guided by
        # normal and albedo, keeps those edges and removes the low-sample noise.
        dn = tree.nodes.new("CompositorNodeDenoise")
        dn.quality = "FAST"
        dn.prefilter = "FAST"
        links.new(light, dn.inputs["Image"])
        links.new(rl.outputs["Denoising Normal"], dn.inputs["Normal"])
        links.new(rl.outputs["Denoising Albedo"], dn.inputs["Albedo"])
        light = dn.outputs["Image"]
    sources = {
        "image": rl.outputs["Image"],
        "diffuse_light": light,
        "diffuse_color": rl.outputs["DiffCol"],
        "plane": rl.outputs[PLANE_AOV],
    }
    for name in PASSES:
        out.file_slots.new(f"{name}_")
        links.new(sources[name], out.inputs[-1])


def render_passes(scratch: str | os.PathLike) -> dict[str, np.ndarray]:
    """Render the current scene; return every pass of PASSES as float32 arrays."""
    scratch = Path(scratch)
    for old in scratch.glob("*.exr"):
        old.unlink()
    bpy.ops.render.render(write_still=False)
    frame = bpy.context.scene.frame_current
    result = {}
    for name in PASSES:
        path = scratch / f"{name}_{frame:04d}.exr"
        if not path.exists():
            raise RuntimeError(f"Blender wrote no {path.name}; the compositor did not run")
        img = bpy.data.images.load(str(path))
        try:
            w, h = img.size
            buf = np.empty(w * h * 4, dtype=np.float32)
            img.pixels.foreach_get(buf)
        finally:
            bpy.data.images.remove(img)
        arr = buf.reshape(h, w, 4)[::-1, :, :3]
        result[name] = np.ascontiguousarray(arr[..., 0] if name == "plane" else arr)
    return result


def blender_info() -> dict[str, Any]:
    return {"blender_version": bpy.app.version_string}
