"""Figures for drs-evaluate: metric against set size K, and a qualitative grid of restorations.

Uses matplotlib's Agg backend (no display needed); every PNG is written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: evaluation runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from generator.dataset_format import atomic_path  # noqa: E402

# One fixed colour per method so the PSNR plot, the SSIM plot and the grid agree.
_COLOURS = {
    "network": "tab:red",
    "weiss": "tab:blue",
    "median": "tab:green",
    "mean": "tab:orange",
    "rpca": "tab:purple",
}
_MARKERS = {"network": "o", "weiss": "s", "median": "^", "mean": "v", "rpca": "D"}


def _colour(method: str, index: int) -> str:
    """The method's fixed colour, or a distinct spare one for a method without one."""
    return _COLOURS.get(method, f"C{(index + 5) % 10}")


def _save(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def metric_vs_k(
    metrics: dict[str, dict[str, dict[str, Any]]],
    base: str,
    ylabel: str,
    path: str | Path,
    paper: dict[str, dict[int, dict[str, float]]] | None = None,
) -> None:
    """Two panels, histogram-matched (left, the paper's figure) and raw (right): `base` ("psnr" or
    "ssim") against K, one line per method with 95 % CI error bars; the paper's figures, where it
    gives them, as hollow markers in the method's colour."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    methods = list(dict.fromkeys([*metrics, *(paper or {})]))
    colours = {m: _colour(m, i) for i, m in enumerate(methods)}
    # Small horizontal offsets so equal values (all methods coincide at K = 1) stay distinguishable.
    dodge = {m: (i - (len(metrics) - 1) / 2) * 0.07 for i, m in enumerate(metrics)}
    ticks = sorted({int(k) for by_k in metrics.values() for k in by_k})
    for ax, key, title in (
        (axes[0], f"{base}_matched", "after histogram matching"),
        (axes[1], base, "raw (no matching)"),
    ):
        for method, by_k in metrics.items():
            ks = sorted(int(k) for k in by_k)
            ys = [by_k[str(k)][key] for k in ks]
            err = [by_k[str(k)][f"{key}_ci95"] or 0.0 for k in ks]
            ax.errorbar(
                [k + dodge[method] for k in ks],
                ys,
                yerr=err,
                label=method,
                color=colours[method],
                marker=_MARKERS.get(method, "o"),
                markersize=5,
                linewidth=1.8,
                capsize=3,
            )
        for method, by_k in (paper or {}).items():
            pts = [(k, v[key]) for k, v in sorted(by_k.items()) if key in v]
            ticks += [k for k, _ in pts]
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    linestyle="none",
                    marker=_MARKERS.get(method, "o"),
                    markersize=10,
                    markerfacecolor="none",
                    markeredgewidth=1.6,
                    color=colours[method],
                )
        ax.set_title(f"{ylabel} {title}")
        ax.set_xlabel("set size K (images per sequence)")
        ax.grid(True, alpha=0.3)
    for ax in axes:
        ax.set_xticks(sorted(set(ticks)))
    axes[0].set_ylabel(ylabel)
    handles, labels = axes[0].get_legend_handles_labels()
    for method in methods:
        if method not in metrics:  # in the paper's figures but not evaluated here (e.g. no checkpoint)
            handles.append(
                plt.Line2D(
                    [],
                    [],
                    linestyle="none",
                    marker=_MARKERS.get(method, "o"),
                    markerfacecolor="none",
                    color=colours[method],
                )
            )
            labels.append(f"{method} (paper only)")
    if paper:
        handles.append(
            plt.Line2D(
                [], [], linestyle="none", marker="o", markerfacecolor="none", color="gray", markersize=9
            )
        )
        labels.append("hollow: paper's figure")
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"{ylabel} against set size (mean over test sequences, 95 % CI)")
    fig.tight_layout()
    _save(fig, path)


def qualitative_grid(rows: Sequence[Any], path: str | Path, max_inputs: int = 9) -> None:
    """One row per sequence: its inputs (up to max_inputs), each method's output with its
    histogram-matched PSNR, then the target. rows: trainer.evaluate.GridRow-like objects with
    inputs (K, H, W, 3), outputs {method: (H, W, 3)}, scores {method: dB}, target (H, W, 3)."""
    methods = list(dict.fromkeys(m for row in rows for m in row.outputs))
    n_in = min(max(row.inputs.shape[0] for row in rows), max_inputs)
    cols = n_in + len(methods) + 1
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.75 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        panels: list[tuple[np.ndarray | None, str]] = []
        for j in range(n_in):
            panels.append((row.inputs[j] if j < row.inputs.shape[0] else None, f"input {j + 1}"))
        for m in methods:
            panels.append((row.outputs.get(m), f"{m}\n{row.scores.get(m, float('nan')):.1f} dB"))
        panels.append((row.target, "target"))
        for c, (img, label) in enumerate(panels):
            ax = axes[r, c]
            ax.axis("off")
            if img is not None:
                ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
                ax.set_title(label, fontsize=8)
        axes[r, 0].text(
            -0.08,
            0.5,
            f"seq {row.sequence_id}, K={row.inputs.shape[0]}",
            transform=axes[r, 0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=8,
        )
    fig.suptitle(
        "Qualitative results: inputs, each method's output (PSNR after histogram matching), target",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)
