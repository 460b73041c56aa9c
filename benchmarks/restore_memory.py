"""Peak memory and speed of `drs-restore` against the number of photos K, beside a per-pixel median.

    .venv/bin/python benchmarks/restore_memory.py            # 3840x2160, K = 2, 10, 50 (many minutes on 2 cores)
    .venv/bin/python benchmarks/restore_memory.py --quick    # 1280x720, K = 2, 6 (about a minute)

Every measurement runs in a fresh child process and reports that process's own peak resident set
(VmHWM; not ru_maxrss, which also counts the parent's memory inherited through fork), so imports
and allocator state of one run cannot leak into another. Goals: peak memory at K = 50 within 10 %
of K = 2 and under 3 GB at 4K on the CPU; each added 4K photo costs <= 5 s on 2 cores (the
"s/added" column: wall time over K = 2, divided by the photos added), for the default drs_fusion
beside the paper's design (drs_paper) in the same run.

Also times the network's two halves on one 1920x1080 image (encode: once per photo; decode: once
per set) against the prototype anchor: planes 18, 10/5/6 blocks, ~1.5 M parameters took ~4.2 s to
encode and ~9.2 s to decode on these 2 cores.

Weights are random (speed and memory do not depend on them). Figures are machine-dependent, so
read them as ratios against the K = 2 row of the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
ANCHOR_1080P = {"encode_s": 4.2, "decode_s": 9.2}

# Child: run one measurement, print one JSON line with its own peak RSS and the work's wall time.
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
def _peak_mb():
    # VmHWM: this process image's own high-water mark. ru_maxrss would also count the parent's
    # memory, inherited through fork() before exec().
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
mode, ckpt, out, tile, *paths = sys.argv[1:]
import numpy as np
start = time.perf_counter()
if mode == "restore":
    from trainer.restore import main
    rc = main(["--quiet", "--checkpoint", ckpt, "--out", out, *(["--tile", tile] if tile != "-1" else []), *paths])
elif mode == "median":  # what a per-pixel median over the same photos needs: all of them at once
    from PIL import Image
    stack = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    Image.fromarray(np.median(stack, axis=0).astype(np.uint8)).save(out)
    rc = 0
else:  # "halves": the network's encode and decode on one image, for the speed anchor
    import torch
    from model import model_from_checkpoint
    net = model_from_checkpoint(ckpt).to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 1080, 1920).contiguous(memory_format=torch.channels_last)
    if net.num_stages != 1:
        raise SystemExit("halves: use a single-stage (mean or max) architecture")
    with torch.inference_mode():
        t0 = time.perf_counter()
        z = net.encode_until(x, 0, [None])
        t1 = time.perf_counter()
        net.decode(z, x)
        t2 = time.perf_counter()
    print(json.dumps({"encode_s": t1 - t0, "decode_s": t2 - t1}))
    sys.exit(0)
wall = time.perf_counter() - start
print(json.dumps({"rc": rc, "peak_mb": _peak_mb(), "wall_s": wall}))
"""


def child(mode: str, ckpt: Path, out: Path, tile: int, paths: list[Path]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(ckpt), str(out), str(tile), *map(str, paths)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result.get("rc", 0) != 0:
        raise RuntimeError(f"{mode} child returned {result['rc']}:\n{proc.stderr[-2000:]}")
    return result


def make_photos(folder: Path, k: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """k distinct photo-like JPEGs: one smooth cover under different shading, a highlight and an occluder."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= height
    xx /= width
    cover = np.stack([0.5 + 0.4 * np.sin(6.3 * (f * xx + g * yy)) for f, g in rng.uniform(1, 8, (3, 2))], -1)
    paths = []
    for i in tqdm(range(k), desc=f"writing {k} photos {width}x{height}", unit="img"):
        a, b, c = rng.uniform(-0.4, 0.4, 3)
        img = cover * (0.8 + a * xx + b * yy + c * xx * yy)[..., None]
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r**2)[..., None]  # specular highlight
        y0, x0 = int(rng.uniform(0, 0.7) * height), int(rng.uniform(0, 0.7) * width)
        img[y0:y0 + height // 5, x0:x0 + width // 6] *= 0.2  # occluder / shadow
        p = folder / f"photo{i:03d}.jpg"
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(p, quality=92)
        paths.append(p)
    return paths


def save_random_checkpoint(arch: str, path: Path) -> Path:
    from model import build_model
    from model.checkpoint import save_checkpoint

    net = build_model(arch)
    return save_checkpoint(path, model_state=net.state_dict(), arch=net.arch, arch_args=net.arch_args)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1280x720, K = 2, 6 (smoke run)")
    ap.add_argument("--size", default=None, help="WxH of the photos (default 3840x2160, quick 1280x720)")
    ap.add_argument("--ks", default=None, help="comma-separated set sizes (default 2,10,50, quick 2,6)")
    ap.add_argument("--archs", default="drs_fusion,drs_paper", help="architectures for the K sweep")
    ap.add_argument("--speed-archs", default="drs_small,drs_paper",
                    help="paper-design architectures for the 1080p encode/decode timing (empty: none)")
    ap.add_argument("--tile", type=int, default=-1, help="drs-restore --tile (default: each network's own)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    width, height = map(int, (args.size or ("1280x720" if args.quick else "3840x2160")).split("x"))
    ks = [int(k) for k in (args.ks or ("2,6" if args.quick else "2,10,50")).split(",")]
    results: dict = {"size": [width, height], "tile": args.tile, "sweep": [], "halves_1080p": {}}

    with tempfile.TemporaryDirectory(prefix="drs-bench-") as tmp:
        tmp = Path(tmp)
        photos = make_photos(tmp, max(ks), width, height)
        ckpts = {a: save_random_checkpoint(a, tmp / f"{a}.pt") for a in
                 {*args.archs.split(","), *filter(None, args.speed_archs.split(","))}}

        for arch in filter(None, args.speed_archs.split(",")):
            r = child("halves", ckpts[arch], tmp / "unused.png", 0, [])
            results["halves_1080p"][arch] = r
            print(f"{arch}: 1920x1080 encode {r['encode_s']:.2f} s (anchor {ANCHOR_1080P['encode_s']}), "
                  f"decode {r['decode_s']:.2f} s (anchor {ANCHOR_1080P['decode_s']}), untiled", flush=True)

        tile = "each network's default" if args.tile < 0 else args.tile
        print(f"\n{width}x{height}, tile {tile}, peak RSS of each child process")
        print(f"{'what':<22}{'K':>4}{'peak MB':>10}{'x K=2':>8}{'wall s':>9}{'s/image':>9}{'s/added':>9}")
        for name in [*args.archs.split(","), "median"]:
            base = first = None
            for k in ks:
                if name == "median":
                    r = child("median", ckpts[args.archs.split(",")[0]], tmp / f"median-{k}.png", 0, photos[:k])
                else:
                    r = child("restore", ckpts[name], tmp / f"out-{name}-{k}.png", args.tile, photos[:k])
                base = base or r["peak_mb"]
                first = first or (k, r["wall_s"])
                # What one more photo costs, without the fixed cost of a restore (start-up, decode).
                added = (r["wall_s"] - first[1]) / (k - first[0]) if k > first[0] else None
                row = {"what": name if name == "median" else f"drs-restore {name}", "k": k, **r,
                       "s_per_image": r["wall_s"] / k, "s_per_added_image": added,
                       "peak_ratio_vs_k2": r["peak_mb"] / base}
                results["sweep"].append(row)
                print(f"{row['what']:<22}{k:>4}{r['peak_mb']:>10.0f}{row['peak_ratio_vs_k2']:>8.2f}"
                      f"{r['wall_s']:>9.1f}{row['s_per_image']:>9.2f}"
                      + (f"{added:>9.2f}" if added is not None else f"{'-':>9}"), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
