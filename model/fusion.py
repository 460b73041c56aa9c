"""The full-resolution fusion network ("drs_fusion", the default architecture).

    K photos --robust centre c (per pixel, iteratively reweighted: ~ the set's geometric median)
             --each photo + its difference from c --> context encoder at 1/4 resolution
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
Every convolution is zero-padded without normalisation, so tiles with a halo of
`radius()` pixels reproduce the whole-image result (model/tiling.py).
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
    # drs-restore's tile size for this design: its logits see ~140 px around each pixel, so 1024 px
    # tiles would recompute ~60 % extra at the halos; 2048 px tiles keep a 4K restore under 2 GB.
    default_tile = 2048

    def __init__(self, planes: int = 12, context_channels: int = 32, context_blocks: int = 4,
                 context_dilations: list[int] | tuple[int, ...] = (1, 2, 4, 8), centre_iterations: int = 3):
        super().__init__()
        for name, value in (("planes", planes), ("context_channels", context_channels)):
            if int(value) < 2:
                raise ValueError(f"{name}={value}: must be >= 2")
        if int(centre_iterations) < 0:
            raise ValueError(f"centre_iterations={centre_iterations}: must be >= 0")
        if len(context_dilations) == 0 or any(int(d) < 1 for d in context_dilations):
            raise ValueError(f"context_dilations={list(context_dilations)}: needs at least one dilation, all >= 1")
        p, c = planes, context_channels
        self.centre_iterations = int(centre_iterations)
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

    def context_radius(self) -> int:
        """Full-resolution receptive radius of encode_context()."""
        return self.context.radius()

    def logit_radius(self) -> int:
        """Full-resolution receptive radius of photo_logit() with respect to its photo and centre.

        detail 2 px; context as above; mix 1/4-res 3x3 (4 px) + bilinear x4 upsampling (1 base
        pixel: 4 px); to_logit 2 px.
        """
        return max(2, self.context_radius() + 4 + 4) + 2

    def decode_radius(self) -> int:
        """Full-resolution receptive radius of decode(): light head 2 base px (8) + upsampling (4); residual 2."""
        return 8 + 4 + 2

    # ------------------------------------------------------------------ pieces (each tiles)
    @staticmethod
    def photo_input(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """A photo and its difference from the robust centre: (N, 3, H, W) x2 -> (N, 6, H, W)."""
        return torch.cat([x, x - centre], dim=1)

    def encode_context(self, x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) photos and (1 or N, 3, H, W) centre, H, W multiples of 4 -> (N, C, H/4, W/4)."""
        return self.context(self.photo_input(x, centre.expand_as(x)))

    def photo_logit(self, x: torch.Tensor, centre: torch.Tensor, ctx_mean: torch.Tensor, ctx_max: torch.Tensor,
                    own: torch.Tensor | None = None) -> torch.Tensor:
        """How much to trust each photo at each pixel: (N, 3, H, W) photos -> (N, 1, H, W) logits.

        centre (1|N, 3, H, W); ctx_mean, ctx_max (1|N, C, H/4, W/4): the set-pooled context;
        own: the photos' own encode_context() output when already computed (batched forward).
        """
        a = self.photo_input(x, centre.expand_as(x))
        if own is None:
            own = self.context(a)
        n = x.shape[0]
        g = torch.cat([own, ctx_mean.expand(n, -1, -1, -1), ctx_max.expand(n, -1, -1, -1)], dim=1)
        g = F.interpolate(self.mix(g), scale_factor=4, mode="bilinear", align_corners=False)
        return self.to_logit(torch.cat([self.detail(a), g], dim=1))

    def decode(self, fused: torch.Tensor, centre: torch.Tensor, ctx_mean: torch.Tensor,
               ctx_max: torch.Tensor) -> torch.Tensor:
        """Softmax-fused photos (B, 3, H, W), centre (B, 3, H, W), pooled context (B, C, H/4, W/4) -> (B, 3, H, W)."""
        light = F.interpolate(self.light(torch.cat([ctx_mean, ctx_max], dim=1)), scale_factor=4,
                              mode="bilinear", align_corners=False)
        gain, bias = light[:, :3], light[:, 3:]
        return fused * (1.0 + gain) + bias + self.residual(torch.cat([fused, centre], dim=1))

    # ------------------------------------------------------------------ batched forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, K, 3, H, W) in [0, 1] -> (B, 3, H, W). Holds every photo's features at once;
        model/fusion_online.py gives the same result in memory independent of K."""
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"expected x of shape (B, K, 3, H, W), got {tuple(x.shape)}")
        from model.network import pad_to_multiple  # one padding rule for every architecture

        b, k, _, height, width = x.shape
        xp = pad_to_multiple(x, PAD_MULTIPLE)
        centre = robust_centre(xp, self.centre_iterations)
        flat = xp.reshape(b * k, *xp.shape[2:])
        centre_k = centre.repeat_interleave(k, dim=0)
        own = self.encode_context(flat, centre_k)
        pooled = own.reshape(b, k, *own.shape[1:])
        ctx_mean, ctx_max = pooled.mean(dim=1), pooled.amax(dim=1)
        logits = self.photo_logit(flat, centre_k, ctx_mean.repeat_interleave(k, dim=0),
                                  ctx_max.repeat_interleave(k, dim=0), own=own)
        weights = torch.softmax(logits.reshape(b, k, 1, *logits.shape[-2:]), dim=1)
        fused = (weights * xp).sum(dim=1)
        out = self.decode(fused, centre, ctx_mean, ctx_max)
        return out[..., :height, :width]
