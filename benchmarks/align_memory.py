"""Peak memory and time of `drs-restore --align`'s consensus alignment against the number of photos.

    .venv/bin/python benchmarks/align_memory.py               # 8 and 16 photos of 1024x768
    .venv/bin/python benchmarks/align_memory.py --ks 4,8 --size 640x480

The restore itself streams (benchmarks/restore_memory.py); aligning the photos to each other by
consensus (generator/align_set.py) holds each photo's work copy and warped copies of it, so its
memory grows with the set. Each measurement runs trainer/restore_align.Aligner, as `drs-restore
--align` builds it, on semi-real JPEGs (tests/semireal.py) in a fresh child process and reports
that process's own peak resident set (VmHWM) and wall time. The per-photo cost is the slope
between the smallest and the largest set; read it beside the smallest set's figure of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
from pathlib import Path
import cv2
cv2.setNumThreads(1)
from trainer.restore_align import Aligner

paths = sorted(Path(sys.argv[1]).glob("*.jpg"))
size = tuple(int(v) for v in sys.argv[2].split("x"))
start = time.perf_counter()
aligner = Aligner(paths, size, progress=False)
seconds = time.perf_counter() - start
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"photos": len(paths), "kept": len(aligner.paths), "peak_mb": peak / 1024, "seconds": seconds}))
"""


def measure(folder: Path, size: str) -> dict:
    """One alignment of the JPEGs in `folder` in a fresh process: its peak memory and time."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), size], check=True, capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="8,16", help="comma-separated numbers of photos (one intruder is added)")
    ap.add_argument("--size", default="1024x768", help="WxH of the photos")
    ap.add_argument("--seed", type=int, default=3, help="tests/semireal.py seed (3: a cover every photo aligns to)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.semireal import make_sequence

    w, h = (int(v) for v in args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (int(v) for v in args.ks.split(",")):
            folder = Path(tmp) / f"k{k}"
            make_sequence(args.seed, photos=k, photo_size=(w, h)).write(folder)
            (folder / "reference.jpg").unlink()  # drs-restore has no reference
            rows.append(measure(folder, args.size))
            r = rows[-1]
            print(f"{r['photos']:3d} photos ({args.size}): peak {r['peak_mb']:7.0f} MB, {r['seconds']:6.1f} s, "
                  f"kept {r['kept']}", flush=True)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        per_photo = (last["peak_mb"] - first["peak_mb"]) / (last["photos"] - first["photos"])
        print(f"each added photo: {per_photo:.1f} MB of peak memory, "
              f"{(last['seconds'] - first['seconds']) / (last['photos'] - first['photos']):.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
