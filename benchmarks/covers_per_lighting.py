"""What reusing one lighting for several covers costs in diversity (issue 11, README cost model).

    .venv/bin/python benchmarks/covers_per_lighting.py --work /tmp/cpl            # the README's run (~1.5 h, 1 thread)
    .venv/bin/python benchmarks/covers_per_lighting.py --work /tmp/cpl --quick    # minutes: checks the plumbing only

Two training sets of the same render cost, the same number of lighting groups G (each group's
lighting is path traced once, the covers multiplied in afterwards): A has G sequences with
`render.covers_per_lighting=1`, B has 3G with `covers_per_lighting=3`. `drs_fusion` is trained from
scratch on each with the pretraining recipe for a fixed number of steps, and both are validated on the
same unseen sequences (validation covers, one cover per lighting). Printed: validation PSNR at K=9
against the step, A beside B. Everything goes to --work, and a rerun skips what is already there
(renders by their manifest, training by its summary.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COVERS = ROOT / "data" / "covers"


def covers(split: str) -> list[str]:
    """The photo covers of `make covers` when built, else the procedural default."""
    folder = COVERS / split
    return ["covers=folder", f"covers.dir={folder}"] if folder.is_dir() and any(folder.iterdir()) else []


def render(out: Path, n: int, seed: int, per_lighting: int, split: str, args) -> float:
    """drs-generate into `out` (skipped when its manifest exists); returns the seconds it took."""
    if (out / "manifest.json").exists():
        return 0.0
    start = time.perf_counter()
    subprocess.run([str(BIN / "drs-generate"), f"out_dir={out}", f"num_sequences={n}", f"seed={seed}",
                    "sequence_length=9", f"resolution={args.resolution}", "scene=paper", "camera=phone",
                    f"render.covers_per_lighting={per_lighting}", "render.threads=1", "progress=false",
                    f"sequences_per_shard={3 * args.groups}", f"hydra.run.dir={out}/logs/hydra", *covers(split)],
                   check=True)
    return time.perf_counter() - start


def train(run: Path, data: Path, val: Path, args) -> list[dict]:
    """The pretraining recipe from scratch for args.steps; its validations (summary.json)."""
    summary = run / "summary.json"
    if not summary.exists():
        subprocess.run([str(BIN / "drs-train"), "experiment=pretrain", f"data.train={data}", f"data.val={val}",
                        f"out_dir={run}", f"data.crop={min(96, args.resolution)}", f"trainer.max_steps={args.steps}", f"optim.warmup_steps={min(200, args.steps // 4)}", f"trainer.val_every={args.val_every}",
                        f"trainer.ckpt_every={args.val_every}", f"data.val_limit={args.val}", "trainer.ema_decay=0.995",
                        "trainer.progress=false", f"hydra.run.dir={run}/hydra"],
                       check=True, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    return json.loads(summary.read_text())["validations"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--groups", type=int, default=192, help="lighting groups per training set (G)")
    parser.add_argument("--val", type=int, default=48, help="validation sequences")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--quick", action="store_true", help="6 groups, 6 validation sequences, 64 px, 20 steps")
    args = parser.parse_args()
    if args.quick:
        args.groups, args.val, args.resolution, args.steps, args.val_every = 6, 6, 64, 20, 10
    w = args.work
    seconds = {"val": render(w / "val", args.val, 2100, 1, "val", args),
               "A": render(w / "A", args.groups, 3100, 1, "train", args),
               "B": render(w / "B", 3 * args.groups, 3200, 3, "train", args)}
    curves = {name: train(w / f"run{name}", w / name, w / "val", args) for name in ("A", "B")}
    print(f"render seconds (0: rendered by an earlier run): {seconds}")
    print(f"validation PSNR at K=9 (dB), {args.val} unseen sequences; median "
          f"{curves['A'][0]['median_psnr']:.2f}")
    print("| step | A: 1 cover per lighting | B: 3 covers per lighting | B - A |")
    print("| --- | --- | --- | --- |")
    for a, b in zip(curves["A"], curves["B"], strict=True):
        print(f"| {a['step']} | {a['psnr']:.2f} | {b['psnr']:.2f} | {b['psnr'] - a['psnr']:+.2f} |")
    (w / "result.json").write_text(json.dumps({"render_seconds": seconds, "curves": curves}, indent=2))


if __name__ == "__main__":
    main()
