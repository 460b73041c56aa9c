"""How hard a scene preset is: the classical baselines' scores on it, beside the paper's table.

    .venv/bin/python benchmarks/difficulty.py --work /tmp/diff-paper scene=paper render.covers_per_lighting=1 \
        num_sequences=200 resolution=256
    .venv/bin/python benchmarks/difficulty.py --work /tmp/diff-default num_sequences=40 resolution=128
    .venv/bin/python benchmarks/difficulty.py --work DIR --eval-only      # score what DIR holds

Arguments after the options are `drs-generate` overrides (any config group: scene=, camera=,
covers.dir=, ...). Rendering goes to `--work` through the ordinary generator, so an interrupted run
resumes: rerun the same command, or render one shard per call with `shard=I` (renders only; then
`--eval-only` scores every finished shard). Each sequence is scored with its first K images,
K = 1, 3, 5, 9, for the per-pixel median and mean and Weiss 2001 (trainer/baselines.py), PSNR raw
and after histogram matching to the target (trainer/metrics.py), averaged over sequences. The paper's figures are
from GUIDE section 4 (1,000 synthetic test sequences, 256 px); with one image median and mean are
that image, so the paper's K=1 median figure stands for both. The calibration goal (issue 11):
every median and mean cell the paper reports within 1 dB, Weiss within 3 dB.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from generator.cli_generate import CONF_DIR, generate
from generator.config import register, validate
from generator.dataset_format import ShardReader
from trainer.baselines import mean, median, weiss
from trainer.metrics import match_histograms, psnr

KS = (1, 3, 5, 9)
METHODS = {"median": median, "mean": mean, "weiss": weiss}
# (method, K) -> paper's PSNR in dB, histogram-matched / raw (None: not reported).
PAPER_MATCHED = {("median", 1): 16.50, ("median", 3): 20.20, ("median", 5): 22.30, ("median", 9): 24.70,
                 ("mean", 1): 16.50, ("mean", 9): 23.11,
                 ("weiss", 3): 22.55, ("weiss", 5): 25.05, ("weiss", 9): 26.61}
PAPER_RAW = {("median", 9): 21.07}
TOLERANCE_DB = {"median": 1.0, "mean": 1.0, "weiss": 3.0}
PSNR_CAP = 60.0  # identical images give +inf; cap before averaging


def render(work: Path, overrides: list[str]) -> dict:
    """Compose `drs-generate`'s config with `overrides`, render into `work` (resumable)."""
    from hydra import compose, initialize_config_dir

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = validate(compose(config_name="generate", overrides=[f"out_dir={work}", "progress=false", *overrides]))
    start = time.perf_counter()
    generate(cfg)
    return {"config": cfg.content_config(), "render_seconds": round(time.perf_counter() - start, 1)}


def score(work: Path) -> tuple[dict[str, dict[str, float]], int]:
    """Mean PSNR per 'method@K' (raw and matched) over every sequence in work's shard files."""
    sums: dict[str, dict[str, list[float]]] = {}
    n = 0
    for path in sorted((work / "shards").glob("shard-*.h5")):
        with ShardReader(path) as reader:
            for rec in reader:
                target = rec.target.astype(np.float32) / 255.0
                inputs = rec.inputs.astype(np.float32) / 255.0
                n += 1
                for k in KS:
                    if k > len(inputs):
                        continue
                    for name, fn in METHODS.items():
                        pred = fn(inputs[:k])
                        cell = sums.setdefault(f"{name}@{k}", {"raw": [], "matched": []})
                        cell["raw"].append(min(psnr(pred, target), PSNR_CAP))
                        cell["matched"].append(min(psnr(match_histograms(pred, target), target), PSNR_CAP))
    return {key: {m: float(np.mean(v)) for m, v in cell.items()} for key, cell in sums.items()}, n


def table(scores: dict[str, dict[str, float]]) -> tuple[list[str], bool]:
    """Markdown rows: ours beside the paper's, and whether every reported cell is within tolerance."""
    rows = ["| method | K | ours raw | paper raw | ours matched | paper matched | off by (matched) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    ok = True
    for name in METHODS:
        for k in KS:
            cell = scores.get(f"{name}@{k}")
            if cell is None:
                continue
            paper_m, paper_r = PAPER_MATCHED.get((name, k)), PAPER_RAW.get((name, k))
            off = ""
            for ours, paper in ((cell["matched"], paper_m), (cell["raw"], paper_r)):
                if paper is not None:
                    within = abs(ours - paper) <= TOLERANCE_DB[name]
                    ok &= within
            if paper_m is not None:
                delta = cell["matched"] - paper_m
                off = f"{delta:+.2f} dB {'ok' if abs(delta) <= TOLERANCE_DB[name] else 'OFF'}"
            rows.append(f"| {name} | {k} | {cell['raw']:.2f} | {'' if paper_r is None else f'{paper_r:.2f}'} | "
                        f"{cell['matched']:.2f} | {'' if paper_m is None else f'{paper_m:.2f}'} | {off} |")
    return rows, ok


def plot(scores: dict[str, dict[str, float]], out: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {"median": "tab:blue", "mean": "tab:orange", "weiss": "tab:green"}
    for name in METHODS:
        ks = [k for k in KS if f"{name}@{k}" in scores]
        ax.plot(ks, [scores[f"{name}@{k}"]["matched"] for k in ks], "o-", color=colours[name], label=f"{name}, {label}")
        pk = [k for k in KS if (name, k) in PAPER_MATCHED]
        ax.plot(pk, [PAPER_MATCHED[(name, k)] for k in pk], "s--", color=colours[name], alpha=0.6, label=f"{name}, paper")
    ax.set_xlabel("images per sequence K")
    ax.set_ylabel("PSNR after histogram matching (dB)")
    ax.set_xticks(KS)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="dataset folder (kept, so a rerun resumes)")
    parser.add_argument("--eval-only", action="store_true", help="score the shards in --work, render nothing")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    parser.add_argument("--plot", type=Path, help="also draw matched PSNR against K, ours and the paper's")
    parser.add_argument("--label", default="ours", help="name of this preset in the plot")
    parser.add_argument("overrides", nargs="*", help="drs-generate overrides, e.g. scene=paper resolution=256")
    args = parser.parse_args()
    info = {} if args.eval_only else render(args.work, args.overrides)
    if any(o.startswith("shard=") for o in args.overrides):
        print(f"rendered {' '.join(args.overrides)} into {args.work} in {info['render_seconds']} s; score with --eval-only")
        return
    start = time.perf_counter()
    scores, n = score(args.work)
    if n == 0:
        print(f"error: no finished shard in {args.work / 'shards'}", file=sys.stderr)
        sys.exit(2)
    rows, ok = table(scores)
    print(f"difficulty of {' '.join(args.overrides) or 'the defaults'}: {n} sequences in {args.work}"
          f" (render {info.get('render_seconds', '-')} s, scoring {time.perf_counter() - start:.0f} s)")
    print("\n".join(rows))
    print(f"every reported median/mean cell within 1 dB and Weiss within 3 dB of the paper: {'yes' if ok else 'no'}")
    if args.json:
        args.json.write_text(json.dumps({"sequences": n, "overrides": args.overrides, "scores": scores,
                                         "within_tolerance": ok, **info}, indent=2))
    if args.plot:
        plot(scores, args.plot, args.label)


if __name__ == "__main__":
    main()
