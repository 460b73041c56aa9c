"""Render throughput of the default (fast) mode against plain path tracing, and its fidelity.

    .venv/bin/python benchmarks/render_throughput.py                       # 256 px, K=9
    .venv/bin/python benchmarks/render_throughput.py --quick               # 64 px, K=3, seconds
    .venv/bin/python benchmarks/render_throughput.py --scene paper --camera phone   # another preset

Three renders of the same sequences (same seed, same scenes) in this one command, so speed-ups are
ratios measured under the same machine load: the fast default; a plain path trace at 16 samples
(`render.quality=reference render.reference_samples=16`, the usual "cheap" setting and the
baseline the project measures itself against); and the reference path trace at high samples.
Fidelity: PSNR (dB, uint8 sRGB) of each image against the reference render of the same image.

`--processes P` renders each set as P shards at once, one process and `--threads` Cycles threads
each: how a farm node (or the joblib launcher) fills its cores. On 2 cores, two one-thread renders
scale better than one two-thread render, whose threads wait on each other at every image.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from generator.cli_generate import CONF_DIR, generate
from generator.config import CameraConfig, GenerateConfig, RenderConfig, SceneConfig, register, validate
from generator.dataset_format import ShardReader


def _groups(scene: str, camera: str) -> tuple[SceneConfig, CameraConfig]:
    """The scene and camera config groups named on the command line (conf/scene, conf/camera)."""
    from hydra import compose, initialize_config_dir

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = validate(compose(config_name="generate", overrides=[f"scene={scene}", f"camera={camera}"]))
    return cfg.scene, cfg.camera


def _render(out: Path, quality: str, n: int, args, samples: int, seed_salt: int = 0) -> tuple[float, dict[int, np.ndarray]]:
    scene, camera = _groups(args.scene, args.camera)
    cfg = GenerateConfig(
        out_dir=str(out), num_sequences=n, sequence_length=args.length, resolution=args.resolution, seed=args.seed,
        sequences_per_shard=n, progress=False, scene=scene, camera=camera,
        render=RenderConfig(quality=quality, reference_samples=samples, seed_salt=seed_salt, threads=args.threads,
                            covers_per_lighting=args.covers_per_lighting, samples=args.samples),
    )
    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    if args.processes == 1:
        generate(cfg)
    else:
        _generate_in_processes(cfg, args.processes)
    seconds = time.perf_counter() - start
    args.cpu_seconds[out.name] = _cpu_seconds() - cpu0
    images = {}
    for path in sorted((out / "shards").glob("shard-*.h5")):
        with ShardReader(path) as r:
            for rec in r:
                images[rec.sequence_id] = rec.inputs
    if len(images) != n:
        raise SystemExit(f"{out.name}: {len(images)} of {n} sequences rendered (QA rejections?); see the logs")
    return seconds, images


def _generate_in_processes(cfg: GenerateConfig, processes: int) -> None:
    """cfg's sequences as `processes` shards rendered at once, each by its own spawned process (a
    farm task: shard=i); every child is joined, so its CPU time (and its Blender's) is counted."""
    per_shard = -(-cfg.num_sequences // processes)
    per_shard += -per_shard % cfg.render.covers_per_lighting  # whole lighting groups in every shard
    cfg = dataclasses.replace(cfg, sequences_per_shard=per_shard)
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=generate, args=(dataclasses.replace(cfg, shard=i),)) for i in range(cfg.num_shards)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    failed = [i for i, w in enumerate(workers) if w.exitcode]
    if failed:
        raise SystemExit(f"shards {failed} failed (exit codes {[workers[i].exitcode for i in failed]})")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the Blender worker is joined when
    generate() returns): what a render costs however loaded the machine is."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--length", type=int, default=9, help="images per sequence (K)")
    parser.add_argument("--fast-sequences", type=int, default=12)
    parser.add_argument("--reference-sequences", type=int, default=1)
    parser.add_argument("--reference-samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scene", default="default", help="scene preset (conf/scene/NAME.yaml)")
    parser.add_argument("--camera", default="none", help="camera effects (conf/camera/NAME.yaml)")
    parser.add_argument("--threads", type=int, default=0, help="Blender render threads per process (0: all cores)")
    parser.add_argument("--processes", type=int, default=1,
                        help="render each set as this many shards at once (a farm node's tasks); use --threads 1 with it")
    parser.add_argument("--covers-per-lighting", type=int, default=RenderConfig.covers_per_lighting)
    parser.add_argument("--samples", type=int, default=RenderConfig.samples, help="fast path samples per pixel (denoised)")
    parser.add_argument("--quick", action="store_true", help="64 px, K=3, 6 fast and 1 reference sequence at 128 spp")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the high-sample reference render (no fidelity figures): its cost dominates on a loaded machine")
    args = parser.parse_args()
    if args.quick:
        args.resolution, args.length, args.fast_sequences, args.reference_sequences, args.reference_samples = 64, 3, 6, 1, 128

    args.cpu_seconds = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        fast_s, fast = _render(Path(tmp) / "fast", "fast", args.fast_sequences, args, args.reference_samples)
        plain_s, plain = _render(Path(tmp) / "plain", "reference", args.reference_sequences, args, 16)
        # An independent noise pattern: the cheap renders' samples must not be a subset of its own.
        ref_s, ref = (None, {}) if args.no_reference else _render(
            Path(tmp) / "reference", "reference", args.reference_sequences, args, args.reference_samples, 1)
    load_after = os.getloadavg()
    rate = {
        "fast": args.fast_sequences / fast_s * 3600,
        "plain16": args.reference_sequences / plain_s * 3600,
        **({} if ref_s is None else {"reference": args.reference_sequences / ref_s * 3600}),
    }
    fidelity = {} if ref_s is None else {
        name: [psnr(images[sid][j], ref[sid][j]) for sid in ref for j in range(args.length)]
        for name, images in (("fast", fast), ("plain16", plain))
    }
    figures = {
        "resolution": args.resolution,
        "sequence_length": args.length,
        "reference_samples": args.reference_samples,
        "scene": args.scene,
        "camera": args.camera,
        "covers_per_lighting": args.covers_per_lighting,
        "fast_samples": args.samples,
        "processes": args.processes,
        "threads": args.threads,
        "load_average_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        **{f"{k}_sequences_per_hour": round(v, 2) for k, v in rate.items()},
        "speedup_fast_over_plain16": round(rate["fast"] / rate["plain16"], 2),
        # CPU time per sequence (Blender and this process): load-independent up to cache sharing;
        # 3600 / it is sequences per core-hour, twice that an upper bound for the 2-core machine.
        "fast_cpu_seconds_per_sequence": round(args.cpu_seconds["fast"] / args.fast_sequences, 3),
        "plain16_cpu_seconds_per_sequence": round(args.cpu_seconds["plain"] / args.reference_sequences, 3),
        "speedup_fast_over_plain16_cpu": round((args.cpu_seconds["plain"] / args.reference_sequences)
                                               / (args.cpu_seconds["fast"] / args.fast_sequences), 2),
        "fast_sequences_per_core_hour": round(3600 * args.fast_sequences / args.cpu_seconds["fast"], 1),
        **({} if ref_s is None else {"speedup_fast_over_reference": round(rate["fast"] / rate["reference"], 1)}),
        **{f"psnr_{k}_vs_reference_db_mean": round(float(np.mean(v)), 2) for k, v in fidelity.items()},
        **{f"psnr_{k}_vs_reference_db_min": round(float(np.min(v)), 2) for k, v in fidelity.items()},
    }
    print(f"render throughput at {args.resolution}x{args.resolution}, K={args.length}, scene={args.scene} camera={args.camera} "
          f"covers_per_lighting={args.covers_per_lighting} fast samples={args.samples}, {args.processes} process(es) x "
          f"{args.threads or 'all'} thread(s) (includes Blender start-up)")
    print(f"  load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}: ratios are what to compare")
    print(f"  fast (default):        {rate['fast']:9.1f} sequences/hour  ({args.fast_sequences} sequences in {fast_s:.1f} s)")
    print(f"  plain path trace 16spp:{rate['plain16']:9.1f} sequences/hour  ({args.reference_sequences} in {plain_s:.1f} s)")
    if ref_s is not None:
        print(f"  reference {args.reference_samples} spp:     {rate['reference']:9.2f} sequences/hour  ({args.reference_sequences} in {ref_s:.1f} s)")
    print(f"  fast CPU time: {figures['fast_cpu_seconds_per_sequence']:.2f} s per sequence = "
          f"{figures['fast_sequences_per_core_hour']:.0f} sequences per core-hour; "
          f"{figures['speedup_fast_over_plain16_cpu']:.1f}x plain-16 in CPU time")
    print(f"  speed-up fast / plain-16: {figures['speedup_fast_over_plain16']:.1f}x"
          + ("" if ref_s is None else f";  fast / reference: {figures['speedup_fast_over_reference']:.1f}x"))
    for name, values in fidelity.items():
        print(f"  PSNR {name} vs reference, per image: mean {np.mean(values):.2f} dB, min {np.min(values):.2f} dB over {len(values)} images")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
