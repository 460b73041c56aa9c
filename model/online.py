"""Constant-memory inference: fold images into a running aggregate one at a time, then decode.

    out = restore_online(net, lambda: (img for img in my_images), tile=1024)   # (3, H, W)

Memory does not grow with the number of images K: only one input image, one image's features
and the running aggregates (sum + count for "mean", running max for "max", both at 1/4 resolution,
plus the running sum of the inputs at full resolution for the mean-image residual) are alive at
any time. With `tile`, the encoder and decoder also run tile by tile (model/tiling.py), so memory
stays bounded for 4K photos too.

"multi" aggregation: every encoder stage after the first needs the set-pooled features of the
previous stage, i.e. of *all* images, before any image can go on. Keeping every image's
intermediate features would make memory grow with K, so instead the images are streamed
`net.num_stages` times: pass s re-encodes each image through stages 0..s (using the pooled
features of passes < s) and folds stage s's output into pool s. Memory stays constant; the price
is reading every image num_stages times and about (num_stages + 1) / 2 times the encoder compute
(2x for the default 3 stages). That is why `images` is a callable returning a fresh iterable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch

from model.network import PAD_MULTIPLE, DeepResidualSet, pad_to_multiple
from model.tiling import base_halo, base_tile, run_tiled


class RunningPool:
    """Running set pooling of one image's tensor (1, C, h, w) at a time: "mean" = sum / count, "max" = running max.

    Accumulates in float32 whatever the compute dtype, so half-precision runs do not lose the sum.
    """

    def __init__(self, how: str):
        if how not in ("mean", "max"):
            raise ValueError(f"pooling {how!r}: expected 'mean' or 'max'")
        self.how = how
        self.acc: torch.Tensor | None = None
        self.count = 0

    def add(self, h: torch.Tensor) -> None:
        h = h.float()
        if self.acc is None:
            self.acc = h.clone()
        elif self.how == "mean":
            self.acc.add_(h)
        else:
            torch.maximum(self.acc, h, out=self.acc)
        self.count += 1

    def result(self) -> torch.Tensor:
        if self.acc is None:
            raise ValueError("no images were given: cannot aggregate an empty set")
        return self.acc / self.count if self.how == "mean" else self.acc


def _check_image(img: torch.Tensor, index: int, size: tuple[int, int] | None) -> tuple[int, int]:
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"image {index}: expected shape (3, H, W), got {tuple(img.shape)}")
    hw = (int(img.shape[1]), int(img.shape[2]))
    if size is not None and hw != size:
        raise ValueError(f"image {index} is {hw[1]}x{hw[0]} but the first image is {size[1]}x{size[0]}; "
                         "all images of a set must have the same size")
    return hw


def prepare_inference(net: torch.nn.Module, device: str | torch.device | None, half: bool, channels_last: bool):
    """Move `net` to `device` in eval mode (channels-last if asked); returns (net, prepare, autocast):
    prepare(img (3, H, W), multiple=4) -> float32 (1, 3, H', W') on the device, padded to the multiple;
    autocast a context manager."""
    device = torch.device(device) if device is not None else next(net.parameters()).device
    if half and device.type != "cuda":
        raise ValueError(f"half precision needs a CUDA device, got {device}")
    net = net.to(device).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.float16) if half else contextlib.nullcontext()

    def prepare(img: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
        return pad_to_multiple(img.to(device=device, dtype=torch.float32), multiple)[None].contiguous(memory_format=fmt)

    return net, prepare, autocast


@torch.inference_mode()
def restore_online(
    net: DeepResidualSet | torch.nn.Module,
    images: Callable[[], Iterable[torch.Tensor]],
    *,
    tile: int | None = None,
    device: str | torch.device | None = None,
    half: bool = False,
    channels_last: bool = True,
) -> torch.Tensor:
    """Restore one set streamed image by image.

    net: a DeepResidualSet, or a FusionNet (handed to model/fusion_online.py).
    images: zero-argument callable returning a fresh iterable of float (3, H, W) tensors in [0, 1];
        called net.num_passes times: once, num_stages times for "multi" (see the module docstring).
    tile: tile size in full-resolution pixels (rounded up to a multiple of 4), None = untiled.
        Tiled output equals untiled output up to float rounding (halo = receptive radius).
    device: where to compute (default: the network's device); half: float16 autocast, CUDA only.
    Returns float32 (3, H, W) on `device`, roughly [0, 1] (not clamped).
    Side effects: `net` is moved to `device`, put in eval mode and (channels_last) converted to
    channels-last memory format, in place; call net.train() afterwards when evaluating mid-training.
    """
    from model.fusion import FusionNet

    if isinstance(net, FusionNet):  # its own pass structure: model/fusion_online.py
        from model.fusion_online import restore_fusion_online

        return restore_fusion_online(net, images, tile=tile, device=device, half=half, channels_last=channels_last)
    net, prepare, autocast = prepare_inference(net, device, half, channels_last)
    t = base_tile(tile)

    pooled: list[torch.Tensor | None] = [None]
    mean_sum: torch.Tensor | None = None
    size: tuple[int, int] | None = None
    count = 0
    for stage in range(net.num_stages):
        pool = RunningPool(net.stage_pooling(stage))
        halo = base_halo(net.encoder_radius(stage))

        def encode(x: torch.Tensor, *g: torch.Tensor, _stage: int = stage) -> torch.Tensor:
            return net.encode_until(x, _stage, [None, *g])

        n = 0
        for n, img in enumerate(images(), start=1):
            size = _check_image(img, n - 1, size)
            x = prepare(img)
            if stage == 0:  # the full-resolution running sum for the mean-image residual
                mean_sum = x.clone() if mean_sum is None else mean_sum.add_(x)
            with autocast:
                h = run_tiled(encode, [x, *pooled[1:]], [4] + [1] * len(pooled[1:]), 1, t, halo)
            pool.add(h)
            del x, h
        if stage == 0:
            count = n
        elif n != count:
            raise ValueError(f"the image source gave {n} images on pass {stage + 1} but {count} on pass 1; "
                             "'multi' aggregation needs the same images on every pass")
        pooled.append(pool.result())
    if mean_sum is None or size is None:
        raise ValueError("no images were given: cannot restore an empty set")
    mean_image = mean_sum.div_(count)  # in place: one less full-resolution buffer
    with autocast:
        out = run_tiled(net.decode, [pooled[-1], mean_image], [1, 4], 4, t, base_halo(net.decoder_radius()))
    return out[0, :, : size[0], : size[1]].contiguous()
