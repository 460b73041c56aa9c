"""model/tiling.py on its own: the pixel-unit conversions, that tiling really cuts the image into
tiles (the memory bound rests on it), and that the output keeps the dtype asked for.

tests/test_model_online.py checks that tiled equals untiled through the network; these close the
gaps mutation testing found there (a tiling that silently ran untiled, or a too-small halo that the
generous receptive radius hid, still passed it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.tiling import base_halo, base_tile, run_tiled, spans


def test_base_tile_converts_full_resolution_pixels_to_quarter_resolution():
    assert base_tile(None) is None
    assert base_tile(0) is None  # 0 or less means "do not tile", as drs-restore --tile 0 documents
    assert base_tile(-8) is None
    assert base_tile(1) == 1  # at least one base pixel, never a zero-size tile
    assert base_tile(2) == 1
    assert base_tile(4) == 1
    assert base_tile(5) == 2  # rounded up: a tile is never smaller than asked
    assert base_tile(256) == 64


def test_base_halo_covers_the_radius():
    assert [base_halo(r) for r in (0, 1, 4, 5, 8, 9, 270)] == [0, 1, 1, 2, 2, 3, 68]


def test_spans_cover_the_axis_once_with_clipped_halos():
    assert list(spans(10, 4, 1)) == [(0, 4, 0, 5), (4, 8, 3, 9), (8, 10, 7, 10)]
    assert list(spans(8, 8, 3)) == [(0, 8, 0, 8)]


def blur(x: torch.Tensor) -> torch.Tensor:
    """A translation-equivariant function with receptive radius 1 and zero padding."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)


@pytest.mark.parametrize(("h", "w", "tile"), [(12, 40, 16), (40, 12, 16), (30, 30, 8)])
def test_tiles_are_cut_whenever_one_side_exceeds_the_tile(h, w, tile):
    """The crops fn sees are at most tile + 2 halo wide on each axis, and the result is exact."""
    x = torch.rand(1, 2, h, w)
    seen = []

    def fn(t):
        seen.append(tuple(t.shape[-2:]))
        return blur(t)

    out = run_tiled(fn, [x], [1], 1, tile=tile, halo=1)
    assert len(seen) == len(list(spans(h, tile, 1))) * len(list(spans(w, tile, 1))) > 1
    assert max(s[0] for s in seen) <= tile + 2 and max(s[1] for s in seen) <= tile + 2
    assert torch.allclose(out, blur(x), atol=1e-6)


def test_one_tile_as_large_as_the_image_runs_once():
    x = torch.rand(1, 1, 8, 8)
    calls = []
    out = run_tiled(lambda t: calls.append(t.shape) or blur(t), [x], [1], 1, tile=8, halo=1)
    assert calls == [x.shape]
    assert torch.allclose(out, blur(x))


@pytest.mark.parametrize("tile", [None, 4])
def test_output_has_the_requested_dtype(tile):
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    out = run_tiled(blur, [x], [1], 1, tile=tile, halo=1, out_dtype=torch.float16)
    assert out.dtype == torch.float16
    assert run_tiled(blur, [x], [1], 1, tile=tile, halo=1).dtype == torch.float32  # the default


def test_scales_must_match_the_inputs():
    """A forgotten scale would silently crop the wrong region of one input."""
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError):
        run_tiled(lambda a, b: blur(a), [x, x], [1], 1, tile=4, halo=1)


def test_output_stays_on_the_device_of_fn_s_result():
    """PyTorch's "meta" device stands in for a GPU here: a tiled output allocated on the default
    device (the CPU) instead of fn's would fail or copy on a real GPU."""
    x = torch.empty(1, 1, 16, 16, device="meta")
    assert run_tiled(blur, [x], [1], 1, tile=4, halo=1).device.type == "meta"
