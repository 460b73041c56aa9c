"""`make pretrain`: the recipe behind the shipped weights, resumable in runs of any length.

    make pretrain                          # CPU: render the data if missing, train in the background
    PRETRAIN_MINUTES=150 make pretrain     # stop cleanly (checkpoint) after that many minutes
    make pretrain-gpu                      # one GPU: 800 sequences rendered there, <= 10 min of training
    python -m trainer.pretrain --status    # where the run is

Steps, each skipped when already done, so starting it again continues where it stopped:
1. render the training and validation data with the paper-calibrated scenes (scene=paper,
   camera=phone) on photo covers when `make covers` has built them, else on procedural covers;
   the renders are deterministic, so a fresh machine re-renders exactly the same bytes;
2. seed the run directory with the committed checkpoint (model/weights/pretrain_resume.pt) when the
   run directory has none, so the budget accumulates across machines and sessions;
3. `drs-train experiment=pretrain resume=true` with one thread per core it may use, stopped by
   SIGTERM at the time budget (the trainer saves a checkpoint on SIGTERM and exits);
4. copy the newest checkpoint to model/weights/pretrain_resume.pt (commit it) and export the best
   validated (EMA) weights to model/weights/drs_fusion.pt, the weights drs-restore uses by default.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from model.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "model" / "weights"
RESUME_CHECKPOINT = WEIGHTS / "pretrain_resume.pt"
SHIPPED_WEIGHTS = WEIGHTS / "drs_fusion.pt"
BIN = Path(sys.executable).parent


@dataclass
class DataPlan:
    """One rendered dataset of the recipe: where, how many, which seed (fixed: the bytes are too)."""

    name: str
    num_sequences: int
    seed: int
    covers_per_lighting: int


CPU_DATA = [DataPlan("train", 3000, 1000, 3), DataPlan("val", 64, 2000, 1)]
# One GPU machine for minutes: fewer sequences, rendered by Cycles on the GPU (other bytes than the
# CPU's, so they live in their own directory), and the same validation set.
GPU_DATA = [DataPlan("train-gpu", 800, 1000, 3), DataPlan("val", 64, 2000, 1)]
RESOLUTION = 128  # the network is fully convolutional; 128 px renders 4x faster than 256 and trains on 96 px crops


def covers_args(split: str) -> list[str]:
    """Photo covers of `make covers` when built (train split for training, val split for validation)."""
    folder = ROOT / "data" / "covers" / split
    if folder.is_dir() and any(folder.iterdir()):
        return ["covers=folder", f"covers.dir={folder}"]
    return []


def render(data_dir: Path, plan: DataPlan, threads: int, device_args: list[str]) -> Path:
    out = data_dir / plan.name
    if (out / "manifest.json").exists():
        return out
    split = "val" if plan.name == "val" else "train"
    cmd = [str(BIN / "drs-generate"), f"out_dir={out}", f"num_sequences={plan.num_sequences}",
           "sequence_length=9", f"resolution={RESOLUTION}", f"seed={plan.seed}", "sequences_per_shard=100",
           "scene=paper", "camera=phone", f"render.covers_per_lighting={plan.covers_per_lighting}",
           f"render.threads={threads}", f"hydra.run.dir={out}/logs/hydra", *covers_args(split), *device_args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def seed_run_dir(run_dir: Path, resume_from: Path = RESUME_CHECKPOINT) -> Path | None:
    """Start from the committed checkpoint when this run directory has none of its own; returns the copy."""
    ckpt_dir = run_dir / "checkpoints"
    if any(ckpt_dir.glob("step-*.pt")) or not resume_from.is_file():
        return None
    step = int(load_checkpoint(resume_from)["step"])
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    copy = ckpt_dir / f"step-{step:08d}.pt"
    shutil.copy2(resume_from, copy)
    print(f"resuming from the committed checkpoint {resume_from} (step {step})", flush=True)
    return copy


def train(run_dir: Path, train_dir: Path, val_dir: Path, minutes: float | None, extra: list[str]) -> int:
    cmd = [str(BIN / "drs-train"), "experiment=pretrain", f"data.train={train_dir}", f"data.val={val_dir}",
           f"out_dir={run_dir}", "resume=true", "trainer.progress=false", *extra]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd)
    try:
        proc.wait(timeout=None if minutes is None else minutes * 60)
    except subprocess.TimeoutExpired:
        print(f"time budget of {minutes:g} min reached: asking the trainer to checkpoint and stop", flush=True)
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    return proc.returncode


def export(run_dir: Path, resume_to: Path = RESUME_CHECKPOINT, weights_to: Path = SHIPPED_WEIGHTS) -> None:
    """Newest step checkpoint -> pretrain_resume.pt; best (EMA) weights -> drs_fusion.pt."""
    from trainer.checkpoints import step_checkpoints
    from trainer.export_weights import export_weights

    steps = step_checkpoints(run_dir)
    if steps:
        shutil.copy2(steps[-1][1], resume_to)
        print(f"{resume_to} <- step {steps[-1][0]} (commit it to continue elsewhere)")
    best = run_dir / "checkpoints" / "best.pt"
    if best.is_file():
        export_weights(best, weights_to)
        print(f"{weights_to} <- {best} (validation {load_checkpoint(best)['extra'].get('metrics')})")


def status(run_dir: Path) -> None:
    from trainer.checkpoints import step_checkpoints

    steps = step_checkpoints(run_dir)
    print(f"run directory {run_dir}: " + (f"newest checkpoint step {steps[-1][0]}" if steps else "no checkpoint yet"))
    log = run_dir / "cli_train.log"
    if log.is_file():
        print("".join(log.read_text().splitlines(keepends=True)[-5:]), end="")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "pretrain", help="where the rendered data go")
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "pretrain", help="the training run directory")
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("PRETRAIN_MINUTES", 0)) or None,
                    help="time budget of this run's training (default: until trainer.max_steps)")
    ap.add_argument("--gpu", action="store_true", help="the GPU recipe: device cuda, batch 32 of 128 px crops")
    ap.add_argument("--status", action="store_true", help="print where the run is and exit")
    ap.add_argument("overrides", nargs="*", help="extra drs-train overrides, e.g. trainer.max_steps=60000")
    args = ap.parse_args(argv)
    if args.status:
        status(args.run)
        return 0
    threads = int(os.environ.get("OMP_NUM_THREADS", 1))
    started = time.perf_counter()
    plans, device_args = (GPU_DATA, ["render=gpu"]) if args.gpu else (CPU_DATA, [])
    train_dir, val_dir = (render(args.data, plan, threads, device_args if plan.name != "val" else [])
                          for plan in plans)
    seed_run_dir(args.run)
    extra = list(args.overrides)
    if args.gpu:
        extra = ["trainer.device=cuda", "data.batch_size=32", "data.crop=128", "data.num_workers=8", *extra]
    minutes = None if args.minutes is None else max(1.0, args.minutes - (time.perf_counter() - started) / 60)
    rc = train(args.run, train_dir, val_dir, minutes, extra)
    export(args.run)
    return rc


if __name__ == "__main__":
    sys.exit(main())
