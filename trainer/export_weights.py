"""Strip a training checkpoint to what restoring needs (weights, architecture, provenance).

    python -m trainer.export_weights runs/pretrain/checkpoints/best.pt model/weights/drs_small.pt

A drs-train checkpoint also carries optimizer, scheduler, EMA and RNG state (about 4x the weights);
the packaged weights keep the validated weights (the EMA ones when training used EMA), the step,
the training config and the validation metrics, in the same plain-tensor checkpoint format.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.network import complete_arch_args


def export_weights(src: str | Path, dst: str | Path) -> Path:
    payload = load_checkpoint(src)
    extra = payload.get("extra") or {}
    return save_checkpoint(
        dst,
        model_state=payload["model"],
        arch=payload["arch"],
        # Arguments the architecture gained after training started are written out with the default
        # the weights were trained under, so a later change of that default cannot change them.
        arch_args=complete_arch_args(payload["arch"], payload["arch_args"]),
        step=payload["step"],
        config=payload.get("config"),
        extra={"validation": extra.get("metrics"), "exported_from": Path(src).name},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="a drs-train checkpoint (e.g. checkpoints/best.pt)")
    parser.add_argument("dst", type=Path, help="where to write the stripped weights")
    args = parser.parse_args(argv)
    try:
        path = export_weights(args.src, args.dst)
    except CheckpointError as exc:
        print(f"export_weights: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
