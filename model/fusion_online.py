"""Constant-memory inference for FusionNet: the photos stream past several times, one at a time.

    out = restore_fusion_online(net, lambda: (img for img in my_images), tile=1024)   # (3, H, W)

The batched forward needs, per pixel, sums over the set that depend on earlier sums, so the photos
are read `net.num_passes` times (that is why `images` is a callable returning a fresh iterable):

    pass 0          running sum of the photos                      -> centre = mean
    pass 1..T       running Weiszfeld sums sum(w x), sum(w)         -> centre (robust)
    pass T+1        each photo's context features (on the photo area-downsampled by f = the net's
                    context_factor): running mean and max, one value per 4f x 4f "context cell"
    pass T+2        each photo's logit; an online softmax keeps a running max m, sum(exp(l - m))
                    and sum(exp(l - m) x), rescaled whenever m grows (as in flash attention)
    then            decode(fused = sum(exp(l - m) x) / sum(exp(l - m)), centre, pooled context)

Alive at any time: one photo, its features, and a fixed number of full-resolution (3 + 3 + 1 + 1 + 1
channels) and context-cell (2 x C channels) accumulators, whatever K is. With `tile`, every
full-resolution convolution runs tile by tile with the exact halo (model/tiling.py, tiles aligned
to context cells), so 4K photos fit too; the context itself runs on images about context_size
pixels across.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from model.fusion import FusionNet, robust_centre_step
from model.network import PAD_MULTIPLE
from model.online import RunningPool, _check_image, prepare_inference
from model.tiling import base_halo, base_tile, run_tiled


class _Photos:
    """One pass over the photos: checks sizes and counts, yields padded (1, 3, H', W') float32 tensors.

    Padding: to a multiple of 4f, f = the network's context factor for the photos' size."""

    def __init__(self, images: Callable[[], Iterable[torch.Tensor]], prepare: Callable[..., torch.Tensor],
                 net: FusionNet):
        self.images, self.prepare, self.net = images, prepare, net
        self.size: tuple[int, int] | None = None
        self.count: int | None = None
        self.passes = 0

    @property
    def factor(self) -> int:
        assert self.size is not None, "the context factor is known once a photo was read"
        return self.net.context_factor(self.size)

    def __call__(self) -> Iterator[torch.Tensor]:
        self.passes += 1
        n = 0
        for n, img in enumerate(self.images(), start=1):
            self.size = _check_image(img, n - 1, self.size)
            yield self.prepare(img, PAD_MULTIPLE * self.factor)
        if n == 0:
            raise ValueError("no images were given: cannot restore an empty set")
        if self.count is None:
            self.count = n
        elif n != self.count:
            raise ValueError(f"the image source gave {n} images on pass {self.passes} but {self.count} on pass 1; "
                             "the fusion network reads the same images on every pass")


@torch.inference_mode()
def restore_fusion_online(
    net: FusionNet,
    images: Callable[[], Iterable[torch.Tensor]],
    *,
    tile: int | None = None,
    device: str | torch.device | None = None,
    half: bool = False,
    channels_last: bool = True,
) -> torch.Tensor:
    """Restore one set streamed photo by photo; arguments and result as model.online.restore_online.

    images: zero-argument callable returning a fresh iterable of float (3, H, W) tensors in [0, 1];
        called net.num_passes times. Returns float32 (3, H, W) on `device`, not clamped.
    """
    net, prepare, autocast = prepare_inference(net, device, half, channels_last)
    photos = _Photos(images, prepare, net)
    centre = _robust_centre(photos, net.centre_iterations)
    f = photos.factor
    t = base_tile(tile, PAD_MULTIPLE * f)  # in context cells
    centre_small = net.downsample(centre, f)
    ctx_mean, ctx_max = _pooled_context(net, photos, centre_small, f, t, autocast)
    fused = _fuse(net, photos, centre, centre_small, ctx_mean, ctx_max, f, t, autocast)

    def decode(fused: torch.Tensor, centre: torch.Tensor, ctx_mean: torch.Tensor, ctx_max: torch.Tensor):
        return net.decode(fused, centre, ctx_mean, ctx_max, f)

    cell = PAD_MULTIPLE * f
    with autocast:
        out = run_tiled(decode, [fused, centre, ctx_mean, ctx_max], [cell, cell, 1, 1], cell, t, net.decode_halo())
    assert photos.size is not None
    return out[0, :, : photos.size[0], : photos.size[1]].contiguous()


def _robust_centre(photos: _Photos, iterations: int) -> torch.Tensor:
    """Passes 0..T: the mean, then T Weiszfeld steps; (1, 3, H', W') float32."""
    total = None
    for x in photos():
        total = x.clone() if total is None else total.add_(x)
    assert total is not None and photos.count is not None
    centre = total.div_(photos.count)
    for _ in range(iterations):
        num = den = None
        for x in photos():
            wx, w = robust_centre_step(x, centre)
            num = wx if num is None else num.add_(wx)
            den = w if den is None else den.add_(w)
        centre = num.div_(den)
    return centre


def _own_context(net: FusionNet, x: torch.Tensor, centre_small: torch.Tensor, f: int, t: int | None,
                 autocast) -> torch.Tensor:
    """One photo's context features (1, C, H'/4f, W'/4f), from the photo downsampled by f."""
    with autocast:
        return run_tiled(net.encode_small, [net.downsample(x, f), centre_small], [PAD_MULTIPLE, PAD_MULTIPLE], 1,
                         t, base_halo(net.context_radius()))


def _pooled_context(net: FusionNet, photos: _Photos, centre_small: torch.Tensor, f: int, t: int | None,
                    autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass T+1: running mean and max of every photo's context features, (1, C, H'/4f, W'/4f) each."""
    mean, peak = RunningPool("mean"), RunningPool("max")
    for x in photos():
        h = _own_context(net, x, centre_small, f, t, autocast)
        mean.add(h)
        peak.add(h)
    return mean.result(), peak.result()


def _fuse(net: FusionNet, photos: _Photos, centre: torch.Tensor, centre_small: torch.Tensor, ctx_mean: torch.Tensor,
          ctx_max: torch.Tensor, f: int, t: int | None, autocast) -> torch.Tensor:
    """Pass T+2: the softmax-weighted sum of the photos, computed online; (1, 3, H', W')."""
    cell = PAD_MULTIPLE * f

    def logit(x: torch.Tensor, centre: torch.Tensor, own: torch.Tensor, ctx_mean: torch.Tensor,
              ctx_max: torch.Tensor) -> torch.Tensor:
        return net.photo_logit(x, centre, ctx_mean, ctx_max, own, f)

    running_max = weight_sum = acc = None
    for x in photos():
        own = _own_context(net, x, centre_small, f, t, autocast)  # recomputed: keeping K of them would grow with K
        with autocast:
            logits = run_tiled(logit, [x, centre, own, ctx_mean, ctx_max], [cell, cell, 1, 1, 1], cell, t, net.logit_halo())
        if running_max is None:
            running_max, weight_sum, acc = logits, torch.ones_like(logits), x.clone()
            continue
        new_max = torch.maximum(running_max, logits)
        scale_old, w = torch.exp(running_max - new_max), torch.exp(logits - new_max)
        weight_sum.mul_(scale_old).add_(w)
        acc.mul_(scale_old).add_(w * x)
        running_max = new_max
    assert acc is not None and weight_sum is not None
    return acc.div_(weight_sum)
