"""The default architecture (drs_fusion, model/fusion.py): invariance, any K and size, constant-memory
streaming equal to the batched forward, exact tiling, checkpoints, and learning beyond Weiss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import DEFAULT_ARCH, FusionNet, build_model, model_from_checkpoint
from model.checkpoint import save_checkpoint
from model.fusion import robust_centre
from model.online import restore_online


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def trained_looking(seed: int = 0, **kw) -> FusionNet:
    """A small drs_fusion whose heads are NOT at their near-zero initialisation, so the softmax
    weights, gain and residual all vary over the image: the equalities below are then not vacuous."""
    torch.manual_seed(seed)
    net = build_model("drs_fusion", **{"context_blocks": 2, "planes": 8, "context_channels": 8, **kw}).eval()
    for head in (net.to_logit[-1], net.light[-1], net.residual[-1]):
        head.reset_parameters()
        with torch.no_grad():
            head.weight.mul_(5.0)
    return net


def batched(net, x):
    with torch.no_grad():
        return net(x[None])[0]


def test_default_architecture_is_fusion_and_rebuilds_from_its_args():
    net = build_model()
    assert DEFAULT_ARCH == "drs_fusion" and isinstance(net, FusionNet) and net.arch == "drs_fusion"
    assert 0.1e6 < sum(p.numel() for p in net.parameters()) < 0.5e6
    again = build_model(net.arch, **net.arch_args)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in again.state_dict().items()}
    assert all(isinstance(v, int | list) for v in net.arch_args.values())
    with pytest.raises(ValueError, match="aggregation"):
        build_model("drs_fusion", aggregation="max")  # no such choice for this design: say so
    with pytest.raises(ValueError, match="centre_iterations"):
        build_model("drs_fusion", centre_iterations=-1)


def test_untrained_network_returns_the_mean():
    """Zero-ish heads: equal softmax weights, unit gain, no residual -> the per-pixel mean."""
    torch.manual_seed(0)
    net = build_model("drs_fusion").eval()
    x = torch.rand(1, 4, 3, 20, 24)
    assert (batched(net, x[0]) - x[0].mean(0)).abs().max() < 0.02


def test_robust_centre_ignores_an_outlier_the_mean_follows():
    x = torch.full((1, 7, 3, 4, 4), 0.5)
    x[0, 3] = 1.0  # one photo with glare everywhere
    centre = robust_centre(x, iterations=3)
    assert (centre - 0.5).abs().max() < 0.02
    assert (x.mean(1) - 0.5).abs().min() > 0.07  # the mean is pulled by 1/14


def test_permutation_invariant_and_sees_every_photo():
    net = trained_looking()
    x = torch.rand(2, 5, 3, 24, 28)
    y = batched(net, x[0])
    assert torch.allclose(y, batched(net, x[0, torch.tensor([3, 0, 4, 2, 1])]), atol=1e-5)
    assert (y - x[0].mean(0)).abs().max() > 1e-2  # more than the mean
    x2 = x[0].clone()
    x2[4] = 0
    assert (batched(net, x2) - y).abs().max() > 1e-3


@pytest.mark.parametrize(("k", "h", "w"), [(1, 17, 23), (2, 32, 32), (9, 13, 40)])
def test_any_set_size_and_odd_image_sizes(k, h, w):
    net = trained_looking()
    x = torch.rand(k, 3, h, w)
    y = batched(net, x)
    assert y.shape == (3, h, w) and torch.isfinite(y).all()


def test_streaming_equals_batched_and_reads_the_photos_once_per_pass():
    net = trained_looking()
    x = torch.rand(6, 3, 26, 35)
    calls = []

    def source():
        calls.append(1)
        return iter(x)

    out = restore_online(net, source)
    assert out.shape == (3, 26, 35)
    assert (out - batched(net, x)).abs().max() < 1e-5
    assert len(calls) == net.num_passes == net.centre_iterations + 3


@pytest.mark.parametrize(("h", "w", "tile"), [(150, 122, 32), (96, 200, 40)])
def test_tiled_equals_untiled(h, w, tile):
    net = trained_looking()
    assert net.logit_halo() * 4 + tile < max(h, w), "tiling would be a no-op"
    x = torch.rand(3, 3, h, w)
    out = restore_online(net, lambda: iter(x), tile=tile)
    assert (out - batched(net, x)).abs().max() < 1e-4


def test_context_sees_the_cover_at_its_training_scale():
    """The context branch works on photos downsampled so the cover spans ~context_size pixels."""
    net = build_model("drs_fusion")
    assert net.context_size == 128 and net.arch_args["context_size"] == 128
    factors = {size: net.context_factor(size) for size in [(96, 96), (128, 128), (200, 300), (256, 256), (2160, 3840)]}
    assert factors == {(96, 96): 1, (128, 128): 1, (200, 300): 2, (256, 256): 2, (2160, 3840): 17}
    with pytest.raises(ValueError, match="context_size"):
        build_model("drs_fusion", context_size=4)


@pytest.mark.parametrize(("h", "w", "tile"), [(70, 50, None), (70, 50, 24), (131, 97, 36)])
def test_downsampled_context_streams_and_tiles_exactly(h, w, tile):
    """context_size 16 makes f = 3 (70x50) or 6 (131x97): streaming and tiling stay exact."""
    net = trained_looking(context_size=16)
    f = net.context_factor((h, w))
    assert f == round(min(h, w) / 16) and f > 2
    x = torch.rand(4, 3, h, w)
    out = restore_online(net, lambda: iter(x), tile=tile)
    assert out.shape == (3, h, w)
    assert (out - batched(net, x)).abs().max() < 1e-4


def test_a_crop_uses_the_whole_photos_scale():
    """Training on crops: image_size gives the context the whole photo's factor, and it matters."""
    net = trained_looking(context_size=16)
    x = torch.rand(1, 3, 3, 40, 40)
    with torch.no_grad():
        own_scale, photo_scale = net(x), net(x, image_size=(80, 80))
    assert net.context_factor((40, 40)) == 3 and net.context_factor((80, 80)) == 5
    assert (own_scale - photo_scale).abs().max() > 1e-3


def test_full_size_default_tiles_exactly():
    torch.manual_seed(3)
    net = build_model("drs_fusion").eval()
    for head in (net.to_logit[-1], net.light[-1], net.residual[-1]):
        head.reset_parameters()
    x = torch.rand(2, 3, 330, 200)
    out = restore_online(net, lambda: iter(x), tile=64)
    assert (out - batched(net, x)).abs().max() < 1e-4


def test_streaming_rejects_sources_that_change_between_passes():
    net = trained_looking()
    x = torch.rand(4, 3, 16, 16)
    calls = []

    def shrinking():
        calls.append(1)
        return iter(x[: 5 - len(calls)])

    with pytest.raises(ValueError, match="on pass 2 but 4 on pass 1"):
        restore_online(net, shrinking)
    with pytest.raises(ValueError, match="no images"):
        restore_online(net, lambda: iter([]))


def test_checkpoint_round_trip(tmp_path):
    net = trained_looking()
    path = save_checkpoint(tmp_path / "f.pt", model_state=net.state_dict(), arch=net.arch, arch_args=net.arch_args)
    again = model_from_checkpoint(path)
    assert isinstance(again, FusionNet)
    x = torch.rand(3, 3, 20, 20)
    assert torch.equal(batched(net, x), batched(again, x))


def _corrupted_sets(rng: np.random.Generator, n: int, k: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Covers with fine detail; each photo: a smooth global gain, a large dark occluder over a
    third of the frame in a random place, and a bright glare blob. (n, k, 3, s, s), (n, 3, s, s)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    targets, inputs = [], []
    for _ in range(n):
        cover = rng.random((3, size, size)) * 0.6 + 0.2
        cover = 0.5 * cover + 0.5 * np.roll(cover, 1, axis=2)  # some spatial correlation
        photos = []
        for _ in range(k):
            img = cover * rng.uniform(0.8, 1.1)
            oy, ox = rng.uniform(0, 0.6, size=2)
            occluded = (yy > oy) & (yy < oy + 0.45) & (xx > ox) & (xx < ox + 0.45)
            img = np.where(occluded[None], rng.uniform(0.0, 0.15, size=(3, 1, 1)), img)
            gy, gx = rng.uniform(0.1, 0.9, size=2)
            img = img + 0.8 * np.exp(-((yy - gy) ** 2 + (xx - gx) ** 2) / 0.01)[None]
            photos.append(np.clip(img, 0, 1))
        inputs.append(np.stack(photos))
        targets.append(cover)
    return torch.tensor(np.array(inputs), dtype=torch.float32), torch.tensor(np.array(targets), dtype=torch.float32)


def test_short_overfit_beats_weiss_and_median():
    """A few hundred steps on 6 small sets of big occluders and glare: beats the median and Weiss 2001."""
    from trainer.baselines import median, weiss
    from trainer.metrics import psnr

    rng = np.random.default_rng(0)
    x, y = _corrupted_sets(rng, n=6, k=5, size=32)
    torch.manual_seed(0)
    net = build_model("drs_fusion", context_blocks=2, planes=8, context_channels=16)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(250):
        opt.zero_grad()
        loss = (net(x) - y).abs().mean()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        out = net(x).clamp(0, 1)

    def score(pred, i):
        return psnr(np.asarray(pred, dtype=np.float64), y[i].permute(1, 2, 0).numpy().astype(np.float64))

    ours = np.mean([score(out[i].permute(1, 2, 0).numpy(), i) for i in range(len(x))])
    photos = [x[i].permute(0, 2, 3, 1).numpy() for i in range(len(x))]
    med = np.mean([score(median(p), i) for i, p in enumerate(photos)])
    wei = np.mean([score(weiss(p), i) for i, p in enumerate(photos)])
    assert ours > max(med, wei) + 1.0, f"network {ours:.2f} dB, median {med:.2f}, Weiss {wei:.2f}"
