"""The full-resolution fusion network ("drs_fusion", the default architecture).

    K photos --robust centre c (per pixel, iteratively reweighted: ~ the set's geometric median)
             --each photo + its difference from c, area-downsampled by f so the cover spans
               ~context_size (128) px as in training --> context encoder at 1/4 of that
             --set mean and max of the context, broadcast back to every photo
             --per-pixel, per-photo logit --> softmax over the set --> weighted sum of the PHOTOS
             --x smooth gain + bias from the pooled context (the light) + small residual

Why this shape (GUIDE section 4, measured in the network issue): the paper's design squeezes
every photo through a 1/4-resolution bottleneck and decodes the clean cover from pooled features,
so fine print has to be re-synthesised; it lost to Weiss 2001. Here the output is a convex
combination of the photos themselves at full resolution, so detail is copied, not re-drawn, and
the network only has to decide, per pixel, which photos to trust (those without occluder, shadow
or glare there), plus a smooth correction for the light that no photo shows cleanly. A photo's
difference from the set's robust centre is the strongest single cue for "this photo is the odd
one out here", hence that input.

Everything across the set is a mean, a max or a softmax-weighted sum, so the network is
permutation invariant, takes any K >= 1, and model/fusion_online.py computes the very same output
streaming one photo at a time in memory independent of K (several passes over the photos).
Every convolution is zero-padded without normalisation, so tiles aligned to context cells (4f
pixels) with a halo of a few cells reproduce the whole-image result (model/tiling.py).

The context factor f: a network trained on 128 px renders lost 3 dB of raw PSNR at 256 px when its
context ran at the photos' own resolution (occluders and sheens twice the size it had learned), and
gained it back with f = 2. It also makes a 4K restore cheap: there the context runs at ~128 px.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import RESIDUAL_INIT_SCALE, conv3x3, res_stack, stack_radius

PAD_MULTIPLE = 4  # two stride-2 convs in the context encoder
CENTRE_EPS = 0.02  # ~5/255: below this distance a photo counts as agreeing with the centre


def robust_centre_step(x: torch.Tensor, centre: torch.Tensor, eps: float = CENTRE_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """One Weiszfeld reweighting of a photo against the current centre, per pixel.

    x, centre: (..., 3, H, W). Returns (w * x, w) with w (..., 1, H, W) = 1 / sqrt(|x - c|^2 + eps^2):
    summed over the set and divided, they give the next estimate of the geometric median.
    """
    w = torch.rsqrt(((x - centre) ** 2).sum(dim=-3, keepdim=True) + eps * eps)
    return w * x, w


def robust_centre(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """Per-pixel robust centre of a set: (B, K, 3, H, W) -> (B, 3, H, W).

    The mean, then `iterations` Weiszfeld steps towards the geometric median in RGB. Unlike the
    median, each step is a sum over the set, so it streams (model/fusion_online.py).
    """
    centre = x.mean(dim=1)
    for _ in range(iterations):
        wx, w = robust_centre_step(x, centre[:, None])
        centre = wx.sum(dim=1) / w.sum(dim=1)
    return centre


class ContextEncoder(nn.Module):
    """Per-photo features at 1/4 resolution: (N, 6, H, W) -> (N, C, H/4, W/4), H, W multiples of 4.

    The stem embeds each 4x4 patch linearly (pixel unshuffle + 1x1 conv), like a ViT's patches: at
    4K this encoder runs twice per photo, and strided 3x3 convs at full and half resolution would
    cost more than the dilated blocks that do the actual work.
    """

    def __init__(self, channels: int, blocks: int, dilations: list[int]):
        super().__init__()
        self.stem = nn.Sequential(nn.PixelUnshuffle(4), nn.Conv2d(6 * 16, channels, 1), nn.ReLU(inplace=True))
        self.blocks = res_stack(channels, blocks, dilations)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(a))

    def radius(self) -> int:
        """Receptive radius in full-resolution pixels: a patch (3 px), each block 2 * d at 1/4."""
        return 4 + 4 * stack_radius(self.blocks)


class FusionNet(nn.Module):
    """Permutation-invariant set-to-image network fusing the photos at full resolution.

    forward: x float (B, K, 3, H, W) in [0, 1] -> (B, 3, H, W) float, roughly [0, 1] (not clamped).
    Any K >= 1 and any H, W (replicate-padded to a multiple of 4 internally, cropped back).
    Built by model.network.build_model("drs_fusion", ...); `arch`/`arch_args` rebuild it.
    """

    arch: str = "custom"
    arch_args: dict[str, Any]
    # drs-restore's tile size for this design: the halos are a few context cells (4f px each; f = 32
    # for a 4K photo), which 2048 px tiles recompute at small cost, and a 4K restore stays under 2 GB.
    default_tile = 2048

    def __init__(self, planes: int = 12, context_channels: int = 32, context_blocks: int = 4,
                 context_dilations: list[int] | tuple[int, ...] = (1, 2, 4, 8), centre_iterations: int = 3,
                 context_size: int = 128):
        super().__init__()
        for name, value in (("planes", planes), ("context_channels", context_channels)):
            if int(value) < 2:
                raise ValueError(f"{name}={value}: must be >= 2")
        if int(context_size) < 8:
            raise ValueError(f"context_size={context_size}: must be >= 8 (pixels across the cover)")
        if int(centre_iterations) < 0:
            raise ValueError(f"centre_iterations={centre_iterations}: must be >= 0")
        if len(context_dilations) == 0 or any(int(d) < 1 for d in context_dilations):
            raise ValueError(f"context_dilations={list(context_dilations)}: needs at least one dilation, all >= 1")
        p, c = planes, context_channels
        self.centre_iterations = int(centre_iterations)
        self.context_size = int(context_size)
        self.context = ContextEncoder(c, context_blocks, list(context_dilations))
        # Per photo at full resolution: its own fine features ...
        self.detail = nn.Sequential(conv3x3(6, p), nn.ReLU(inplace=True), conv3x3(p, p), nn.ReLU(inplace=True))
        # ... and its context beside the set's (mean, max), mixed at 1/4 resolution, then upsampled.
        self.mix = nn.Sequential(nn.Conv2d(3 * c, c, 1), nn.ReLU(inplace=True), conv3x3(c, p), nn.ReLU(inplace=True))
        self.to_logit = nn.Sequential(conv3x3(2 * p, p), nn.ReLU(inplace=True), conv3x3(p, 1))
        # The light: a smooth gain and bias from the pooled context (mean, max).
        self.light = nn.Sequential(conv3x3(2 * c, c), nn.ReLU(inplace=True), conv3x3(c, 6))
        # A small full-resolution residual on the fused image and the robust centre.
        self.residual = nn.Sequential(conv3x3(6, p), nn.ReLU(inplace=True), conv3x3(p, 3))
        with torch.no_grad():  # untrained: equal weights, no gain, no residual -> the set's mean
            for head in (self.to_logit[-1], self.light[-1], self.residual[-1]):
                head.weight.mul_(RESIDUAL_INIT_SCALE * 0.1)
                head.bias.zero_()

    # ------------------------------------------------------------------ structure
    @property
    def num_passes(self) -> int:
        """Passes over the photos when streaming: mean, each centre iteration, context, fusion."""
        return self.centre_iterations + 3

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the per-photo encoders (context and detail): what freeze_encoder keeps fixed."""
        for module in (self.context, self.detail):
            yield from module.parameters()

    def context_factor(self, image_size: tuple[int, int]) -> int:
        """f: the context branch sees the photos area-downsampled by f, so that the cover spans about
        `context_size` pixels there, as in the renders the network was trained on, whatever the
        photos' resolution. Occluders, shadows and sheens are then the size the context learned
        (a cover is a cover at 256 px or in a 4K photo; measured: at f = 1 a network trained at 128 px
        lost 3 dB at 256 px), and at 4K the context costs almost nothing."""
        return max(1, int(min(image_size) / self.context_size + 0.5))

    def context_radius(self) -> int:
        """Receptive radius of the context encoder in pixels of its (downsampled) input."""
        return self.context.radius()

    @staticmethod
    def logit_halo() -> int:
        """Halo of photo_logit() in context cells (4f full-resolution pixels) given the photos' own
        context: mix's 3x3 (1) + bilinear upsampling (1) + detail and to_logit (4 px <= 1 cell)."""
        return 3

    @staticmethod
    def decode_halo() -> int:
        """Halo of decode() in context cells: the light head's two 3x3 (2) + upsampling (1) + residual (2 px <= 1)."""
        return 4

    # ------------------------------------------------------------------ pieces (each tiles)
    @staticmethod
    def photo_input(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """A photo and its difference from the robust centre: (N, 3, H, W) x2 -> (N, 6, H, W)."""
        return torch.cat([x, x - centre], dim=1)

    @staticmethod
    def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
        """Area average over factor x factor blocks (H, W multiples of factor); the identity at 1."""
        return x if factor == 1 else F.avg_pool2d(x, factor)

    def encode_small(self, x_small: torch.Tensor, centre_small: torch.Tensor) -> torch.Tensor:
        """Photos and centre already downsampled by f (the area average is linear, so downsampling
        before taking the difference is exact), sides multiples of 4 -> (N, C, H/4f, W/4f)."""
        return self.context(self.photo_input(x_small, centre_small.expand_as(x_small)))

    def photo_logit(self, x: torch.Tensor, centre: torch.Tensor, ctx_mean: torch.Tensor, ctx_max: torch.Tensor,
                    own: torch.Tensor, factor: int = 1) -> torch.Tensor:
        """How much to trust each photo at each pixel: (N, 3, H, W) photos -> (N, 1, H, W) logits.

        centre (1|N, 3, H, W); own (N, C, H/4f, W/4f): the photos' encode_small() output; ctx_mean,
        ctx_max (1|N, C, H/4f, W/4f): the set-pooled context.
        """
        n = x.shape[0]
        g = torch.cat([own, ctx_mean.expand(n, -1, -1, -1), ctx_max.expand(n, -1, -1, -1)], dim=1)
        g = F.interpolate(self.mix(g), scale_factor=4 * factor, mode="bilinear", align_corners=False)
        return self.to_logit(torch.cat([self.detail(self.photo_input(x, centre.expand_as(x))), g], dim=1))

    def decode(self, fused: torch.Tensor, centre: torch.Tensor, ctx_mean: torch.Tensor,
               ctx_max: torch.Tensor, factor: int = 1) -> torch.Tensor:
        """Softmax-fused photos (B, 3, H, W), centre (B, 3, H, W), pooled context (B, C, H/4f, W/4f) -> (B, 3, H, W)."""
        light = F.interpolate(self.light(torch.cat([ctx_mean, ctx_max], dim=1)), scale_factor=4 * factor,
                              mode="bilinear", align_corners=False)
        gain, bias = light[:, :3], light[:, 3:]
        return fused * (1.0 + gain) + bias + self.residual(torch.cat([fused, centre], dim=1))

    # ------------------------------------------------------------------ batched forward
    def forward(self, x: torch.Tensor, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """x (B, K, 3, H, W) in [0, 1] -> (B, 3, H, W). Holds every photo's features at once;
        model/fusion_online.py gives the same result in memory independent of K.

        image_size: the (H, W) of the whole photos when x is a crop of them (training), so the
        context sees the cover at the scale it will see at inference; None: x's own size."""
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"expected x of shape (B, K, 3, H, W), got {tuple(x.shape)}")
        from model.network import pad_to_multiple  # one padding rule for every architecture

        b, k, _, height, width = x.shape
        f = self.context_factor(image_size or (height, width))
        xp = pad_to_multiple(x, PAD_MULTIPLE * f)
        centre = robust_centre(xp, self.centre_iterations)
        flat = xp.reshape(b * k, *xp.shape[2:])
        own = self.encode_small(self.downsample(flat, f), self.downsample(centre, f).repeat_interleave(k, dim=0))
        pooled = own.reshape(b, k, *own.shape[1:])
        ctx_mean, ctx_max = pooled.mean(dim=1), pooled.amax(dim=1)
        logits = self.photo_logit(flat, centre.repeat_interleave(k, dim=0), ctx_mean.repeat_interleave(k, dim=0),
                                  ctx_max.repeat_interleave(k, dim=0), own, f)
        weights = torch.softmax(logits.reshape(b, k, 1, *logits.shape[-2:]), dim=1)
        fused = (weights * xp).sum(dim=1)
        out = self.decode(fused, centre, ctx_mean, ctx_max, f)
        return out[..., :height, :width]


def fusion_kwargs(net: nn.Module, image_size: tuple[int, int] | None) -> dict[str, Any]:
    """Keyword arguments of a forward on crops of photos of `image_size`: FusionNet takes the size
    (its context factor); other architectures take none."""
    net = getattr(net, "module", net)  # unwrap DistributedDataParallel
    return {"image_size": tuple(image_size)} if isinstance(net, FusionNet) and image_size else {}
