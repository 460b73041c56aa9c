"""Evaluate the network and the classical baselines on a test set, for every set size K.

For each test sequence and each K, `subsets` random K-subsets of its images are drawn from
`default_rng([seed, sequence_id, K])` (so the draw does not depend on which other sequences or
methods are evaluated), and every method restores the *same* subsets. Each restoration is scored
against the sequence's target with PSNR and SSIM, raw and histogram-matched (trainer/metrics.py).

Statistics: the subsets of one sequence are averaged first, then the mean and a 95 % t-interval
are taken over sequences, because subsets of one sequence share content and are not independent
samples. `n` in the output is the number of sequences, `subsets` the number of restorations.

Data is read only through generator/dataset_format.py. This module has no Hydra; the command line
lives in trainer/cli_evaluate.py.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from tqdm import tqdm

from generator.dataset_format import (
    DatasetFormatError,
    SequenceRecord,
    ShardReader,
    atomic_path,
    read_manifest,
)
from trainer.metrics import all_metrics

log = logging.getLogger(__name__)

METRICS = ("psnr", "ssim", "psnr_matched", "ssim_matched")
# Identical images have infinite PSNR; capping keeps means finite and JSON valid. No real
# restoration gets near it (100 dB is an RMS error of 1e-5).
PSNR_CAP = 100.0

Method = Callable[[np.ndarray], np.ndarray]  # float32 (K, H, W, 3) in [0, 1] -> (H, W, 3) in [0, 1]


@dataclass
class EvalSettings:
    """What to evaluate. ks: set sizes; subsets: random K-subsets per sequence (R); seed: of the
    subset draw; max_sequences: cap on test sequences (None: all); grid_sequences / grid_k: how
    many sequences, with which K (None: the largest evaluated), the qualitative grid shows."""

    ks: list[int] = field(default_factory=lambda: list(range(1, 10)))
    subsets: int = 2
    seed: int = 0
    max_sequences: int | None = None
    grid_sequences: int = 3
    grid_k: int | None = None


@dataclass
class GridRow:
    """One row of the qualitative grid: the chosen inputs, each method's output, the target (H, W, 3)."""

    sequence_id: int
    inputs: np.ndarray
    outputs: dict[str, np.ndarray]
    scores: dict[str, float]
    target: np.ndarray


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, dict[str, Any]]]  # method -> str(K) -> figures
    samples: list[dict[str, Any]]  # one per (sequence, K, subset, method)
    grid: list[GridRow]
    skipped: dict[int, int]  # K -> number of sequences too short for it
    num_sequences: int
    sequence_lengths: list[int]


def choose_subsets(length: int, k: int, count: int, seed: int, sequence_id: int) -> list[tuple[int, ...]]:
    """`count` distinct sorted K-subsets of range(length), or all of them if there are no more.

    Deterministic in (seed, sequence_id, k). Returns [] when k > length.
    """
    if k > length:
        return []
    total = math.comb(length, k)
    if total <= count:
        return list(itertools.combinations(range(length), k))
    rng = np.random.default_rng([seed, sequence_id, k])
    chosen: list[tuple[int, ...]] = []
    while len(chosen) < count:
        subset = tuple(sorted(int(i) for i in rng.choice(length, size=k, replace=False)))
        if subset not in chosen:
            chosen.append(subset)
    return chosen


def iter_test_sequences(
    dataset_dir: str | Path, max_sequences: int | None = None
) -> Iterator[SequenceRecord]:
    """Sequences with a target, in manifest order; those without a target are skipped with a warning."""
    manifest = read_manifest(dataset_dir)
    yielded = 0
    for entry in manifest["shards"]:
        path = Path(dataset_dir) / entry["file"]
        with ShardReader(path) as reader:
            if not reader.has_target:
                log.warning(
                    "%s has no target images; its %d sequences cannot be scored and are skipped",
                    path,
                    len(reader),
                )
                continue
            for i in range(len(reader)):
                if max_sequences is not None and yielded >= max_sequences:
                    return
                yield reader.read(i)
                yielded += 1


def count_sequences(dataset_dir: str | Path, max_sequences: int | None) -> int:
    total = sum(int(e["count"]) for e in read_manifest(dataset_dir)["shards"])
    return total if max_sequences is None else min(total, max_sequences)


def _timed(method: Method, inputs: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = method(inputs)  # methods return host arrays, so GPU work has finished when this returns
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0), time.perf_counter() - start


def _score(out: np.ndarray, target: np.ndarray) -> dict[str, float]:
    scores = all_metrics(out, target)
    for key in ("psnr", "psnr_matched"):
        scores[key] = min(scores[key], PSNR_CAP)
    return scores


def _run_methods(
    methods: dict[str, Method],
    inputs: np.ndarray,
    target: np.ndarray,
    key: dict[str, Any],
    row: GridRow | None,
    warmed: set[tuple[str, tuple[int, ...]]],
) -> list[dict[str, Any]]:
    """Every method on one subset: one sample dict each (key + method, seconds, scores); fills `row`.
    `warmed` records the (method, input shape) pairs already run once untimed."""
    samples = []
    for name, method in methods.items():
        if (name, inputs.shape) not in warmed:
            # One untimed call per method and input shape: the first call pays one-off costs
            # (CUDA context, cuDNN/oneDNN kernel selection, page faults) that are not its runtime.
            method(inputs)
            warmed.add((name, inputs.shape))
        out, seconds = _timed(method, inputs)
        scores = _score(out, target)
        samples.append({**key, "method": name, "seconds": seconds, **scores})
        if row is not None:
            row.outputs[name] = out
            row.scores[name] = scores["psnr_matched"]
    return samples


def evaluate(dataset_dir: str | Path, methods: dict[str, Method], settings: EvalSettings) -> EvalResult:
    """Run every method on the same subsets of every test sequence; see the module docstring."""
    if not methods:
        raise ValueError("no methods to evaluate")
    ks = sorted(set(settings.ks))
    grid_k = settings.grid_k or max(ks)
    samples: list[dict[str, Any]] = []
    grid: list[GridRow] = []
    skipped: dict[int, int] = defaultdict(int)
    lengths: list[int] = []
    warmed: set[tuple[str, tuple[int, ...]]] = set()
    total = count_sequences(dataset_dir, settings.max_sequences)
    bar = tqdm(
        iter_test_sequences(dataset_dir, settings.max_sequences), total=total, desc="evaluate", unit="seq"
    )
    for rec in bar:
        length = rec.inputs.shape[0]
        lengths.append(length)
        frames = rec.inputs.astype(np.float32) / 255.0
        target = rec.target.astype(np.float32) / 255.0
        # The grid shows the largest evaluated K that is <= grid_k and fits this sequence.
        fitting = [k for k in ks if k <= min(grid_k, length)]
        row_k = max(fitting) if fitting else None
        for k in ks:
            subsets = choose_subsets(length, k, settings.subsets, settings.seed, rec.sequence_id)
            if not subsets:
                skipped[k] += 1
                continue
            for j, subset in enumerate(subsets):
                inputs = frames[list(subset)]
                want_grid = j == 0 and k == row_k and len(grid) < settings.grid_sequences
                row = GridRow(rec.sequence_id, inputs, {}, {}, target) if want_grid else None
                samples += _run_methods(
                    methods,
                    inputs,
                    target,
                    {"sequence_id": rec.sequence_id, "k": k, "subset": list(subset)},
                    row,
                    warmed,
                )
                if row is not None:
                    grid.append(row)
    if not lengths:
        raise DatasetFormatError(f"{dataset_dir}: no sequence with a target image; nothing to evaluate")
    for k, n in sorted(skipped.items()):
        log.warning("K=%d skipped for %d of %d sequences (shorter than %d images)", k, n, len(lengths), k)
    return EvalResult(summarise(samples), samples, grid, dict(skipped), len(lengths), lengths)


def mean_ci95(values: list[float]) -> tuple[float, float | None]:
    """Mean and half-width of the 95 % Student-t interval; None for the width when n < 2."""
    arr = np.asarray(values, dtype=np.float64)
    m = float(arr.mean())
    if len(arr) < 2:
        return m, None
    half = stats.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr))
    return m, float(half)


def summarise(samples: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Samples -> {method: {str(K): {psnr, psnr_ci95, ..., seconds, n, subsets}}}."""
    groups: dict[tuple[str, int], dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        groups[(s["method"], s["k"])][s["sequence_id"]].append(s)
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (method, k), by_seq in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1])):
        entry: dict[str, Any] = {}
        for key in METRICS:
            per_seq = [float(np.mean([s[key] for s in rows])) for rows in by_seq.values()]
            entry[key], entry[f"{key}_ci95"] = mean_ci95(per_seq)
        all_rows = [s for rows in by_seq.values() for s in rows]
        entry["seconds"] = float(np.mean([s["seconds"] for s in all_rows]))
        entry["n"] = len(by_seq)
        entry["subsets"] = len(all_rows)
        out[method][str(k)] = entry
    # Keep the methods in the order they were run (samples preserve it), not alphabetical.
    order = list(dict.fromkeys(s["method"] for s in samples))
    return {m: out[m] for m in order}


# ----------------------------------------------------------------------------------------------
# reports

# GUIDE section 4: Kwiatkowski & Hellwich 2022, 1,000 synthetic test sequences at 256x256.
# method -> K -> figures; only what the paper states.
PAPER: dict[str, dict[int, dict[str, float]]] = {
    "network": {
        1: {"psnr_matched": 18.53, "ssim_matched": 0.744},
        9: {"psnr_matched": 29.73, "ssim_matched": 0.917, "psnr": 27.90},
    },
    "weiss": {9: {"psnr_matched": 26.61, "ssim_matched": 0.880}},
    "median": {1: {"psnr_matched": 16.50}, 9: {"psnr_matched": 24.70, "ssim_matched": 0.849, "psnr": 21.07}},
    "mean": {9: {"psnr_matched": 23.11, "ssim_matched": 0.808}},
    "rpca": {9: {"psnr_matched": 23.22, "ssim_matched": 0.818}},
}

_TITLES = {
    "psnr_matched": "PSNR after histogram matching (dB): the paper's figure",
    "ssim_matched": "SSIM after histogram matching: the paper's figure",
    "psnr": "PSNR without histogram matching (dB)",
    "ssim": "SSIM without histogram matching",
}


def _fmt(value: float | None, ci: float | None, digits: int) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def _table(
    metrics: dict[str, dict[str, dict[str, Any]]], ks: list[int], cell: Callable[[dict[str, Any]], str]
) -> list[str]:
    lines = ["| method | " + " | ".join(f"K={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for method, by_k in metrics.items():
        cells = [cell(by_k[str(k)]) if str(k) in by_k else "–" for k in ks]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def metrics_markdown(result: EvalResult, info: dict[str, Any]) -> str:
    """metrics.md: one table per figure (methods x K), the paper's figures beside ours, runtimes."""
    metrics = result.metrics
    ks = sorted({int(k) for by_k in metrics.values() for k in by_k})
    lengths = sorted(set(result.sequence_lengths))
    lines = [
        "# drs-evaluate results",
        "",
        f"- test set: `{info.get('data')}`: {result.num_sequences} sequences of {', '.join(map(str, lengths))} images",
        f"- checkpoint: `{info.get('checkpoint') or 'none (baselines only)'}`; device: {info.get('device', 'cpu')}",
        f"- up to {info.get('subsets')} random subsets per sequence and K (seed {info.get('seed')}); every method saw the same subsets",
        "- cells: mean over sequences ± half-width of the 95 % t-interval over sequences (the subsets of a sequence are averaged first)",
    ]
    for k, n in sorted(result.skipped.items()):
        lines.append(f"- K={k} skipped for {n} of {result.num_sequences} sequences (fewer than {k} images)")
    for key in ("psnr_matched", "ssim_matched", "psnr", "ssim"):
        digits = 2 if key.startswith("psnr") else 3
        lines += ["", f"## {_TITLES[key]}", ""]
        lines += _table(metrics, ks, lambda e, key=key, digits=digits: _fmt(e[key], e[f"{key}_ci95"], digits))
    lines += [
        "",
        "## Beside the paper",
        "",
        "Paper: Kwiatkowski & Hellwich 2022, 1,000 synthetic test sequences at 256x256 (GUIDE section 4). "
        "Our test set differs, so compare trends and gaps between methods rather than absolute numbers.",
        "",
        "| method | K | PSNR matched (ours) | PSNR matched (paper) | SSIM matched (ours) | SSIM matched (paper) | PSNR raw (ours) | PSNR raw (paper) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in list(dict.fromkeys([*metrics, *PAPER])):
        for k in sorted(PAPER.get(method, {})):
            ours = metrics.get(method, {}).get(str(k))
            paper = PAPER[method][k]

            def pair(key: str, digits: int, ours=ours, paper=paper) -> str:
                mine = _fmt(ours[key], None, digits) if ours else "not run"
                return f"{mine} | {_fmt(paper.get(key), None, digits)}"

            lines.append(
                f"| {method} | {k} | {pair('psnr_matched', 2)} | {pair('ssim_matched', 3)} | {pair('psnr', 2)} |"
            )
    from trainer.paired import paired_gains, paired_markdown

    lines += paired_markdown(paired_gains(result.samples, "psnr_matched"), ks, "psnr_matched")
    lines += paired_markdown(paired_gains(result.samples, "psnr"), ks, "psnr")
    lines += ["", "## Runtime (seconds per restoration, wall clock, one set at a time)", ""]
    lines += _table(metrics, ks, lambda e: f"{e['seconds']:.4f}")
    lines += ["", "## Counts (sequences / restorations)", ""]
    lines += _table(metrics, ks, lambda e: f"{e['n']} / {e['subsets']}")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_reports(result: EvalResult, out_dir: str | Path, info: dict[str, Any]) -> dict[str, Path]:
    """Write metrics.json, samples.jsonl, metrics.md and the PNGs into out_dir; returns their paths."""
    from trainer import plots  # matplotlib only when reports are written

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics.json": out_dir / "metrics.json",
        "samples.jsonl": out_dir / "samples.jsonl",
        "metrics.md": out_dir / "metrics.md",
        "psnr_vs_k.png": out_dir / "psnr_vs_k.png",
        "ssim_vs_k.png": out_dir / "ssim_vs_k.png",
        "qualitative.png": out_dir / "qualitative.png",
    }
    from trainer.paired import paired_gains

    metrics = dict(result.metrics)
    if "network" in metrics:  # per-sequence paired wins beside the network's own figures
        metrics["network"] = {**metrics["network"], "paired": {
            key: paired_gains(result.samples, key) for key in ("psnr_matched", "psnr", "ssim_matched")}}
    _write_text(paths["metrics.json"], json.dumps(metrics, indent=2) + "\n")
    # One line per restoration, subsets included, so any figure can be recomputed independently.
    _write_text(paths["samples.jsonl"], "".join(json.dumps(s, sort_keys=True) + "\n" for s in result.samples))
    _write_text(paths["metrics.md"], metrics_markdown(result, info))
    plots.metric_vs_k(result.metrics, "psnr", "PSNR (dB)", paths["psnr_vs_k.png"], PAPER)
    plots.metric_vs_k(result.metrics, "ssim", "SSIM", paths["ssim_vs_k.png"], PAPER)
    if result.grid:
        plots.qualitative_grid(result.grid, paths["qualitative.png"])
    else:
        del paths["qualitative.png"]
    return paths
