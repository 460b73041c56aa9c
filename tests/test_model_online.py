"""Constant-memory online aggregation and tiled inference match the batched forward."""

from __future__ import annotations

import pytest
import torch

from model import build_model, pad_to_multiple
from model.online import RunningPool, restore_online
from model.tiling import base_halo, run_tiled

AGGS = ["mean", "max", "multi"]


def tiny(aggregation: str = "mean") -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model("drs_small", encoder_blocks=3, decoder_blocks=2, refine_blocks=2,
                       aggregation=aggregation).eval()


def batched(net, x):
    with torch.no_grad():
        return net(x[None])[0]


@pytest.mark.parametrize("aggregation", AGGS)
def test_online_equals_batched(aggregation):
    net = tiny(aggregation)
    x = torch.rand(6, 3, 26, 35)
    calls = []

    def source():
        calls.append(1)
        return iter(x)

    out = restore_online(net, source)
    assert out.shape == (3, 26, 35)
    assert (out - batched(net, x)).abs().max() < 1e-5
    assert len(calls) == net.num_stages  # "multi" streams the set once per encoder stage


@pytest.mark.parametrize("aggregation", AGGS)
@pytest.mark.parametrize(("h", "w", "tile"), [(97, 122, 32), (128, 64, 40), (50, 131, 48)])
def test_tiled_equals_untiled(aggregation, h, w, tile):
    net = tiny(aggregation)
    # The image must be larger than a tile plus its halo, or tiling would be a no-op.
    assert base_halo(net.encoder_radius()) * 4 + tile < max(h, w)
    x = torch.rand(3, 3, h, w)
    out = restore_online(net, lambda: iter(x), tile=tile)
    assert (out - batched(net, x)).abs().max() < 1e-4


def test_full_size_model_tiles_exactly():
    """drs_small's real receptive field (~270 px) with tiles much smaller than the image."""
    torch.manual_seed(2)
    net = build_model("drs_small").eval()
    x = torch.rand(2, 3, 300, 180)
    out = restore_online(net, lambda: iter(x), tile=128)
    assert (out - batched(net, x)).abs().max() < 1e-4


def test_too_small_a_halo_is_detected():
    """Control for the tiling tests: a halo below the receptive field does change the output."""
    net = tiny()
    x = pad_to_multiple(torch.rand(1, 3, 96, 96))
    with torch.no_grad():
        full = net.encode_until(x, 0, [None])
        cut = run_tiled(lambda t: net.encode_until(t, 0, [None]), [x], [4], 1, tile=8, halo=1)
        exact = run_tiled(lambda t: net.encode_until(t, 0, [None]), [x], [4], 1, tile=8,
                          halo=base_halo(net.encoder_radius()))
    assert (cut - full).abs().max() > 1e-3
    assert (exact - full).abs().max() < 1e-5


def test_receptive_radius_is_an_upper_bound():
    """Changing one input pixel changes no output pixel farther away than the stated radius."""
    net = tiny()
    x = torch.rand(2, 3, 160, 160)
    y = x.clone()
    y[1, :, 80, 80] = 1.0 - y[1, :, 80, 80]
    changed = (batched(net, y) - batched(net, x)).abs().amax(0) > 0
    rows, cols = torch.nonzero(changed, as_tuple=True)
    radius = net.encoder_radius() + net.decoder_radius()
    assert changed.any()
    assert (rows - 80).abs().max() <= radius and (cols - 80).abs().max() <= radius


def test_running_pool_and_source_errors():
    with pytest.raises(ValueError, match="no images"):
        RunningPool("mean").result()
    net = tiny()
    with pytest.raises(ValueError, match="no images"):
        restore_online(net, lambda: iter([]))
    imgs = [torch.rand(3, 20, 20), torch.rand(3, 20, 24)]
    with pytest.raises(ValueError, match="image 1 is 24x20 but the first image is 20x20"):
        restore_online(net, lambda: iter(imgs))
    with pytest.raises(ValueError, match="half precision needs a CUDA device"):
        restore_online(net, lambda: iter(imgs[:1]), half=True, device="cpu")


def test_multi_needs_the_same_images_each_pass():
    net = tiny("multi")
    sets = iter([[torch.rand(3, 16, 16)] * 3, [torch.rand(3, 16, 16)] * 2, [torch.rand(3, 16, 16)] * 3])
    with pytest.raises(ValueError, match="gave 2 images on pass 2 but 3 on pass 1"):
        restore_online(net, lambda: iter(next(sets)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_on_cuda_is_close():
    net = tiny()
    x = torch.rand(4, 3, 64, 80)
    ref = batched(net, x)
    out = restore_online(net, lambda: iter(x), device="cuda", half=True, tile=32).cpu()
    assert (out - ref).abs().max() < 2e-2


def test_error_messages_name_the_image_and_the_problem():
    """drs-restore shows these lines to the user as they are, so their wording is the interface."""
    net = tiny()
    with pytest.raises(ValueError, match=r"^image 0: expected shape \(3, H, W\), got \(4, 20, 20\)$"):
        restore_online(net, lambda: iter([torch.rand(4, 20, 20)]))  # a 3-D tensor, but not RGB
    with pytest.raises(ValueError, match=r"^image 1: expected shape \(3, H, W\), got \(20, 30\)$"):
        restore_online(net, lambda: iter([torch.rand(3, 20, 30), torch.rand(20, 30)]))
    with pytest.raises(ValueError, match="^image 1 is 24x20 but the first image is 30x20; "
                                         "all images of a set must have the same size$"):
        restore_online(net, lambda: iter([torch.rand(3, 20, 30), torch.rand(3, 20, 24)]))
    with pytest.raises(ValueError, match="^pooling 'median': expected 'mean' or 'max'$"):
        RunningPool("median")
    with pytest.raises(ValueError, match="^no images were given: cannot aggregate an empty set$"):
        RunningPool("max").result()
