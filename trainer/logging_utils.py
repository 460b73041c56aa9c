"""TensorBoard scalars and image grids, and the one-line validation summary (rank 0 only)."""

from __future__ import annotations

from pathlib import Path

import torch


def image_grid(inputs: torch.Tensor, output: torch.Tensor, median: torch.Tensor, target: torch.Tensor,
               max_inputs: int = 4) -> torch.Tensor:
    """One row: up to `max_inputs` inputs, then network output, median, target.

    inputs (k, 3, H, W), output/median/target (3, H, W), all in [0, 1] -> (3, H, n*W + gaps) for
    SummaryWriter.add_image. A white 2-px gap separates the tiles.
    """
    tiles = list(inputs[:max_inputs]) + [output, median, target]
    gap = torch.ones(3, inputs.shape[-2], 2)
    row = []
    for t in tiles:
        row += [t.detach().float().cpu().clamp(0, 1), gap]
    return torch.cat(row[:-1], dim=-1)


class RunLogger:
    """TensorBoard writer in out_dir/tb; a no-op on ranks other than 0."""

    def __init__(self, out_dir: str | Path, enabled: bool):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow, and rank 0 only

            self.writer = SummaryWriter(str(Path(out_dir) / "tb"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def image(self, step: int, tag: str, img: torch.Tensor) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, img, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def format_validation(step: int, m: dict[str, float]) -> str:
    """'step 500 | val PSNR 27.31 dB (median 22.05, +5.26) | SSIM 0.912 (median 0.850, +0.062) | k=5 n=64'."""
    return (
        f"step {step} | val PSNR {m['psnr']:.2f} dB (median {m['median_psnr']:.2f}, {m['psnr'] - m['median_psnr']:+.2f})"
        f" | SSIM {m['ssim']:.3f} (median {m['median_ssim']:.3f}, {m['ssim'] - m['median_ssim']:+.3f})"
        f" | k={m['k']} n={m['n']}"
    )
