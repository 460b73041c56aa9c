"""The validation curve of a drs-train run against the median, as a PNG (README figure).

    .venv/bin/python benchmarks/training_curve.py runs/pretrain benchmarks/figures/pretrain_curve.png

Reads the run's TensorBoard scalars (val/psnr, val/median_psnr: raw PSNR at data.val_k images on the
validation set, both on the same sequences) and the validations the newest step checkpoint carries
(`extra.history`: they survive a resume on another machine, TensorBoard files do not), and plots
them against the step; `--weiss DB` adds
Weiss 2001's figure on the same set (from drs-evaluate) as a horizontal line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def read_scalars(run_dir: Path, tags: list[str]) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    known = set(acc.Tags()["scalars"])
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags if tag in known}


def checkpoint_history(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """val/psnr and val/median_psnr from the newest step checkpoint's validation history."""
    from trainer.checkpoints import step_checkpoints

    steps = step_checkpoints(run_dir)
    if not steps:
        return {}
    from model.checkpoint import load_checkpoint

    history = (load_checkpoint(steps[-1][1])["extra"] or {}).get("history") or []
    return {f"val/{key}": [(int(v["step"]), float(v[key])) for v in history if key in v]
            for key in ("psnr", "median_psnr")}


def merged(*sources: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """Union by step of several {tag: [(step, value)]}; a later source wins a step both have."""
    out: dict[str, dict[int, float]] = {}
    for source in sources:
        for tag, points in source.items():
            out.setdefault(tag, {}).update(points)
    return {tag: sorted(points.items()) for tag, points in out.items() if points}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--weiss", type=float, default=None, help="Weiss 2001's PSNR on the same set (dB)")
    args = ap.parse_args(argv)
    series = merged(read_scalars(args.run_dir, ["val/psnr", "val/median_psnr"]), checkpoint_history(args.run_dir))
    if "val/psnr" not in series:
        print(f"{args.run_dir}: no validation scalars in tb/", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    steps, values = zip(*series["val/psnr"], strict=True)
    ax.plot(steps, values, "o-", label="network (EMA weights)")
    if "val/median_psnr" in series:
        ax.axhline(series["val/median_psnr"][-1][1], color="tab:gray", ls="--", label="per-pixel median")
    if args.weiss is not None:
        ax.axhline(args.weiss, color="tab:red", ls=":", label="Weiss 2001")
    ax.set_xlabel("training step (batch 8)")
    ax.set_ylabel("validation PSNR, raw (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
