"""Tile-by-tile evaluation of a translation-equivariant function, exact up to float rounding.

Every conv in the network uses zero padding and no normalisation, so an output pixel depends only
on inputs within the receptive radius r. Cutting each tile with a halo >= r around it and keeping
only the tile's centre therefore gives exactly the untiled output: the halo absorbs the wrong
zero padding at tile edges, and at image borders the tile edge *is* the image edge.

Coordinates are in "base" pixels (the 1/4-resolution grid of the bottleneck); each input and the
output carry a scale (4 for full-resolution tensors, 1 for bottleneck features), which keeps every
tile origin on a multiple of 4 full-resolution pixels so the stride-2 convs see the same grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch


def spans(size: int, tile: int, halo: int) -> Iterator[tuple[int, int, int, int]]:
    """1-D tiling of [0, size): yields (keep_start, keep_end, cut_start, cut_end), cut = keep ± halo clipped."""
    for start in range(0, size, tile):
        end = min(start + tile, size)
        yield start, end, max(0, start - halo), min(size, end + halo)


def run_tiled(
    fn: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    scales: Sequence[int],
    out_scale: int,
    tile: int | None,
    halo: int,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """fn(*inputs) computed tile by tile.

    inputs: tensors (N_i, C_i, s_i*h, s_i*w) sharing one base grid (h, w); scales: s_i.
    fn maps crops of them to (N, C, out_scale*h', out_scale*w') for a base crop (h', w').
    tile, halo: in base pixels; tile None (or >= the size) runs fn once on the whole input.
    Returns (N, C, out_scale*h, out_scale*w) in out_dtype.
    """
    h, w = (d // scales[0] for d in inputs[0].shape[-2:])
    if tile is None or (tile >= h and tile >= w):
        return fn(*inputs).to(out_dtype)
    out = None
    so = out_scale
    for y0, y1, a0, a1 in spans(h, tile, halo):
        for x0, x1, b0, b1 in spans(w, tile, halo):
            crops = [t[..., a0 * s:a1 * s, b0 * s:b1 * s] for t, s in zip(inputs, scales, strict=True)]
            result = fn(*crops)
            if out is None:
                out = torch.empty(*result.shape[:-2], h * so, w * so, dtype=out_dtype, device=result.device)
            out[..., y0 * so:y1 * so, x0 * so:x1 * so] = result[
                ..., (y0 - a0) * so:(y1 - a0) * so, (x0 - b0) * so:(x1 - b0) * so
            ]
    assert out is not None
    return out


def base_tile(tile_px: int | None, cell: int = 4) -> int | None:
    """A tile size in full-resolution pixels -> base pixels (`cell` full-resolution pixels each), at least 1."""
    return None if tile_px is None or tile_px <= 0 else max(1, math.ceil(tile_px / cell))


def base_halo(radius_px: int) -> int:
    """A receptive radius in full-resolution pixels -> a halo in base pixels that covers it."""
    return math.ceil(radius_px / 4)
