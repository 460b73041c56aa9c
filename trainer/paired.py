"""Per-sequence paired comparison of the network against each baseline (drs-evaluate's "wins").

Confidence intervals of two methods' means overlap long before one method is reliably better, since
most of their spread is which sequence is hard. Pairing by sequence removes that: for every
sequence (its random subsets averaged first, as in summarise), the network's score minus the
baseline's; reported as how many sequences the network wins and the mean gain with its 95 % CI.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

REFERENCE = "network"


def per_sequence(samples: list[dict[str, Any]], key: str) -> dict[tuple[str, int], dict[int, float]]:
    """(method, K) -> {sequence_id: mean of `key` over that sequence's subsets}."""
    rows: dict[tuple[str, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        rows[(s["method"], int(s["k"]))][int(s["sequence_id"])].append(float(s[key]))
    return {mk: {sid: float(np.mean(v)) for sid, v in by_seq.items()} for mk, by_seq in rows.items()}


def paired_gains(samples: list[dict[str, Any]], key: str = "psnr_matched") -> dict[str, dict[str, dict[str, Any]]]:
    """{baseline: {str(K): {wins, n, gain, gain_ci95}}}: the network minus the baseline, per sequence.

    Empty when the network was not evaluated. `gain` is in the unit of `key` (dB for PSNR).
    """
    from trainer.evaluate import mean_ci95  # one t-interval for every figure of the report

    table = per_sequence(samples, key)
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (method, k), scores in sorted(table.items()):
        ours = table.get((REFERENCE, k))
        if method == REFERENCE or ours is None:
            continue
        common = sorted(set(ours) & set(scores))
        if not common:
            continue
        diffs = [ours[sid] - scores[sid] for sid in common]
        gain, ci = mean_ci95(diffs)
        out[method][str(k)] = {"wins": int(sum(d > 0 for d in diffs)), "n": len(common), "gain": gain, "gain_ci95": ci}
    return dict(out)


def paired_markdown(gains: dict[str, dict[str, dict[str, Any]]], ks: list[int], key: str) -> list[str]:
    """A metrics.md section: one row per baseline, 'wins/n, +gain ± ci' per K."""
    if not gains:
        return []
    lines = ["", f"## Network vs each baseline, paired by sequence ({key})", "",
             "Cells: sequences where the network scores higher / sequences; mean gain ± 95 % CI of the "
             "per-sequence differences.", "",
             "| baseline | " + " | ".join(f"K={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for baseline, by_k in gains.items():
        cells = []
        for k in ks:
            e = by_k.get(str(k))
            ci = f" ± {e['gain_ci95']:.2f}" if e and e["gain_ci95"] is not None else ""
            cells.append(f"{e['wins']}/{e['n']}, {e['gain']:+.2f}{ci}" if e else "–")
        lines.append(f"| {baseline} | " + " | ".join(cells) + " |")
    return lines
