"""Entry point of a render worker process (started with the `spawn` method by generator.render_pool).

Protocol over a multiprocessing Pipe, plain picklable values only:
    parent -> worker: {"op": "render", "sequence": SequenceSpec dict, "cover": (H,W,3) float32 linear
                       or None, "albedo": float, "occluder_covers": [(h,w,3) float32], "frames": [int],
                       "seed_salt": int}
                      {"op": "stop"}
    worker -> parent: {"ok": True, "frames": [{pass name: array}], "timings": {...}, "rss_mb": float}
                      {"ok": False, "error": str}
Blender's own chatter goes to the worker's log file, not the parent's terminal.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import traceback
from typing import Any


def _redirect_output(log_path: str | None) -> None:
    target = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(target, 1)
    os.dup2(target, 2)


def serve(conn, settings: dict[str, Any]) -> None:
    """Build the scene once, then answer render requests until told to stop."""
    _redirect_output(settings.get("log_path"))
    from blender_scenes import render, scene  # bpy is imported here, in the worker only

    scene.build_base_scene(settings["resolution"], settings["camera_height"], settings["camera_fov"], settings["threads"])
    render.configure_cycles(settings["samples"], settings["max_bounces"], settings["denoise"], settings["adaptive_threshold"])
    device = render.select_device(settings["device"])
    os.makedirs(settings["scratch"], exist_ok=True)
    render.setup_outputs(settings["scratch"], denoise_light=settings["denoise"])
    print(f"[drs worker {os.getpid()}] Cycles device: {device}", flush=True)
    conn.send({"ok": True, "device": device, **render.blender_info()})
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request.get("op") == "stop":
            return
        try:
            conn.send(_render_sequence(request, settings["scratch"], scene, render))
        except Exception:  # report, keep serving: the parent decides whether to retry
            conn.send({"ok": False, "error": traceback.format_exc()})


def _render_sequence(request: dict[str, Any], scratch: str, scene, render) -> dict[str, Any]:
    spec = request["sequence"]
    timings = {"scene": 0.0, "render": 0.0}
    t0 = time.perf_counter()
    scene.set_cover(request["cover"], spec["roughness"], spec["specular"], request.get("albedo", 1.0), spec.get("relief"))
    timings["scene"] += time.perf_counter() - t0
    frames = []
    for j in request["frames"]:
        t0 = time.perf_counter()
        scene.set_frame(spec["frames"][j], request["occluder_covers"], request.get("seed_salt", 0))
        t1 = time.perf_counter()
        frames.append(render.render_passes(scratch))
        timings["scene"] += t1 - t0
        timings["render"] += time.perf_counter() - t1
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"ok": True, "frames": frames, "timings": timings, "rss_mb": rss_mb}
