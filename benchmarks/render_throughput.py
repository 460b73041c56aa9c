"""Render throughput of the default (fast) mode against the reference mode, and their fidelity.

    .venv/bin/python benchmarks/render_throughput.py                       # 256 px, K=9
    .venv/bin/python benchmarks/render_throughput.py --quick               # 64 px, K=3, seconds

Both modes render the same sequences (same seed, same scenes) in this one command, so the speed-up
is a ratio measured under the same machine load. Fidelity: PSNR (dB, uint8 sRGB) of each fast
image against the reference path trace of the same image.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from generator.cli_generate import generate
from generator.config import GenerateConfig, RenderConfig
from generator.dataset_format import ShardReader, read_manifest


def _render(out: Path, quality: str, n: int, args) -> tuple[float, dict[int, np.ndarray]]:
    cfg = GenerateConfig(
        out_dir=str(out), num_sequences=n, sequence_length=args.length, resolution=args.resolution, seed=args.seed,
        sequences_per_shard=n, progress=False,
        render=RenderConfig(quality=quality, reference_samples=args.reference_samples),
    )
    start = time.perf_counter()
    generate(cfg)
    seconds = time.perf_counter() - start
    images = {}
    for entry in read_manifest(out)["shards"]:
        with ShardReader(out / entry["file"]) as r:
            for rec in r:
                images[rec.sequence_id] = rec.inputs
    return seconds, images


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
    parser.add_argument("--quick", action="store_true", help="64 px, K=3, 6 fast and 1 reference sequence at 128 spp")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.resolution, args.length, args.fast_sequences, args.reference_sequences, args.reference_samples = 64, 3, 6, 1, 128

    with tempfile.TemporaryDirectory() as tmp:
        fast_s, fast = _render(Path(tmp) / "fast", "fast", args.fast_sequences, args)
        ref_s, ref = _render(Path(tmp) / "reference", "reference", args.reference_sequences, args)
    fast_rate = args.fast_sequences / fast_s * 3600
    ref_rate = args.reference_sequences / ref_s * 3600
    psnrs = [psnr(fast[sid][j], ref[sid][j]) for sid in ref for j in range(args.length)]
    figures = {
        "resolution": args.resolution,
        "sequence_length": args.length,
        "fast_sequences_per_hour": round(fast_rate, 1),
        "reference_sequences_per_hour": round(ref_rate, 2),
        "reference_samples": args.reference_samples,
        "speedup_fast_over_reference": round(fast_rate / ref_rate, 1),
        "psnr_fast_vs_reference_db_mean": round(float(np.mean(psnrs)), 2),
        "psnr_fast_vs_reference_db_min": round(float(np.min(psnrs)), 2),
        "seconds_fast": round(fast_s, 1),
        "seconds_reference": round(ref_s, 1),
    }
    print(f"render throughput at {args.resolution}x{args.resolution}, K={args.length} (includes Blender start-up)")
    print(f"  fast (default):  {fast_rate:8.1f} sequences/hour  ({args.fast_sequences} sequences in {fast_s:.1f} s)")
    print(f"  reference ({args.reference_samples} spp): {ref_rate:8.2f} sequences/hour  ({args.reference_sequences} in {ref_s:.1f} s)")
    print(f"  speed-up fast / reference: {fast_rate / ref_rate:.1f}x")
    print(f"  PSNR fast vs reference, per image: mean {np.mean(psnrs):.2f} dB, min {np.min(psnrs):.2f} dB over {len(psnrs)} images")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
