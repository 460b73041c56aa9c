"""The Deep Residual Set network (Kwiatkowski & Hellwich, VISAPP 2022; GUIDE section 4).

    K photos --(shared per-image encoder)--> K feature maps at 1/4 resolution
             --(set aggregation: mean | max | multi)--> one feature map
             --(decoder + dilated refinement)--> residual, added to the per-pixel mean of the photos

Output = mean_k(x_k) + decoder(...). Predicting a residual on top of the plain average means an
untrained network already returns the mean baseline, and training only has to learn the
correction (glare, shadows, occluders), which converges much faster than regressing the image.
The per-pixel mean is also fed into the full-resolution refinement stage, since the 1/4-resolution
bottleneck alone cannot carry fine print detail.

Aggregation choices (all permutation invariant, any K >= 1):

- "mean" (the paper's): mean over the set at the bottleneck.
- "max": element-wise max over the set at the bottleneck.
- "multi" (after Aittala & Durand 2018): the encoder is split into `multi_stages` stages; after
  every stage but the last, features are max-pooled over the set and concatenated back into every
  image's branch (then a 1x1 conv, residual); the bottleneck is then mean-pooled.

All three are sums/maxes of per-image quantities, so model/online.py can fold images in one at a
time in constant memory ("multi" needs one pass over the images per stage; see there).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import RESIDUAL_INIT_SCALE, conv3x3, res_stack, stack_radius

AGGREGATIONS = ("mean", "max", "multi")
PAD_MULTIPLE = 4  # two stride-2 convs: sizes must divide by 4 (padded, then cropped back)

# Defaults shared by every architecture; ARCHITECTURES entries override them.
_COMMON: dict[str, Any] = {
    "aggregation": "mean",
    "encoder_dilations": [1, 2, 4, 8],
    "decoder_dilations": [1, 2, 4, 8],
    "refine_dilations": [1, 2, 2, 4, 4, 8],
    "multi_stages": 3,
}

# The two prototype sizes of GUIDE section 4 ("drs_paper" is "drs_base" under the name the docs use
# for reproducing the paper), and the full-resolution fusion design of model/fusion.py (the default).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "drs_small": {**_COMMON, "planes": 8, "encoder_blocks": 10, "decoder_blocks": 10, "refine_blocks": 10},
    "drs_base": {**_COMMON, "planes": 18, "encoder_blocks": 10, "decoder_blocks": 5, "refine_blocks": 6},
    "drs_paper": {**_COMMON, "planes": 18, "encoder_blocks": 10, "decoder_blocks": 5, "refine_blocks": 6},
    "drs_fusion": {"planes": 12, "context_channels": 32, "context_blocks": 4, "context_dilations": [1, 2, 4, 8],
                   "centre_iterations": 3, "context_size": 128},
}
FUSION_ARCHITECTURES = ("drs_fusion",)
DEFAULT_ARCH = "drs_fusion"


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Replicate-pad the last two dims (right and bottom) up to a multiple; (..., H, W) -> (..., H', W').

    Replicate rather than zero padding so the border does not look like a dark occluder.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    return F.pad(flat, (0, pw, 0, ph), mode="replicate").reshape(*lead, x.shape[-3], h + ph, w + pw)


def _split(total: int, parts: int) -> list[int]:
    """Split `total` blocks into `parts` stages as evenly as possible, earlier stages larger."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class DeepResidualSet(nn.Module):
    """Permutation-invariant set-to-image network.

    forward: x float (B, K, 3, H, W) in [0, 1] -> (B, 3, H, W) float, roughly [0, 1] (not clamped).
    Any K >= 1 and any H, W (padded to a multiple of 4 internally and cropped back).

    Built by build_model(); `arch` and `arch_args` are set there so a checkpoint can rebuild it.
    """

    arch: str = "custom"
    arch_args: dict[str, Any]

    def __init__(
        self,
        planes: int = 8,
        encoder_blocks: int = 10,
        decoder_blocks: int = 10,
        refine_blocks: int = 10,
        aggregation: str = "mean",
        encoder_dilations: Sequence[int] = (1, 2, 4, 8),
        decoder_dilations: Sequence[int] = (1, 2, 4, 8),
        refine_dilations: Sequence[int] = (1, 2, 2, 4, 4, 8),
        multi_stages: int = 3,
    ):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={aggregation!r}: expected one of {AGGREGATIONS}")
        for name, value in (("planes", planes), ("multi_stages", multi_stages)):
            if int(value) < 1:
                raise ValueError(f"{name}={value}: must be >= 1")
        for name, dil in (("encoder_dilations", encoder_dilations), ("decoder_dilations", decoder_dilations),
                          ("refine_dilations", refine_dilations)):
            if len(dil) == 0 or any(int(d) < 1 for d in dil):
                raise ValueError(f"{name}={list(dil)}: needs at least one dilation, all >= 1")
        self.aggregation = aggregation
        p, c = planes, 4 * planes
        self.bottleneck_channels = c

        # Per-image encoder: full res -> 1/4 res with two stride-2 convs, then dilated res blocks.
        self.stem = nn.Sequential(
            conv3x3(3, p), nn.ReLU(inplace=True),
            conv3x3(p, 2 * p, stride=2), nn.ReLU(inplace=True),
            conv3x3(2 * p, c, stride=2), nn.ReLU(inplace=True),
        )
        stages = _split(encoder_blocks, multi_stages) if aggregation == "multi" else [encoder_blocks]
        starts = [sum(stages[:i]) for i in range(len(stages))]
        self.encoder = nn.ModuleList(
            res_stack(c, n, encoder_dilations, start) for n, start in zip(stages, starts, strict=True)
        )
        # "multi": 1x1 conv that mixes the set-pooled features back into each branch (one per stage > 0).
        self.fuse = nn.ModuleList(nn.Conv2d(2 * c, c, 1) for _ in stages[1:])
        with torch.no_grad():
            for conv in self.fuse:
                conv.weight.mul_(RESIDUAL_INIT_SCALE)
                conv.bias.zero_()

        # Decoder on the pooled features, back to full resolution.
        self.decoder = res_stack(c, decoder_blocks, decoder_dilations)
        self.up = nn.Sequential(
            nn.ConvTranspose2d(c, 2 * p, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * p, p, 4, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        self.merge = nn.Sequential(conv3x3(p + 3, p), nn.ReLU(inplace=True))  # + the per-pixel mean
        self.refine = res_stack(p, refine_blocks, refine_dilations)
        self.to_rgb = conv3x3(p, 3)
        with torch.no_grad():  # small residual at init: the untrained net returns ~ the mean image
            self.to_rgb.weight.mul_(RESIDUAL_INIT_SCALE)
            self.to_rgb.bias.zero_()

    # ------------------------------------------------------------------ structure
    @property
    def num_stages(self) -> int:
        """Encoder stages; 1 unless aggregation == "multi"."""
        return len(self.encoder)

    @property
    def num_passes(self) -> int:
        """Passes over the photos when streaming (model/online.py): one per encoder stage."""
        return self.num_stages

    def stage_pooling(self, stage: int) -> str:
        """How the output of encoder `stage` is pooled over the set: "max" or "mean"."""
        if stage < self.num_stages - 1:
            return "max"  # intermediate "multi" pools: max, as in Aittala & Durand 2018
        return "max" if self.aggregation == "max" else "mean"

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the shared per-image encoder (stem, stages, multi fusion convs)."""
        for module in (self.stem, self.encoder, self.fuse):
            yield from module.parameters()

    def encoder_radius(self, stage: int | None = None) -> int:
        """Receptive radius, in full-resolution pixels, of encoder stages 0..stage (default: all).

        stem: 3x3 (1 px) + stride-2 3x3 (1 px) + stride-2 3x3 at stride 2 (2 px) = 4 px; each res
        block adds 2 * dilation pixels at 1/4 resolution = 8 * dilation full-res pixels.
        """
        last = self.num_stages - 1 if stage is None else stage
        return 4 + 4 * sum(stack_radius(self.encoder[i]) for i in range(last + 1))

    def decoder_radius(self) -> int:
        """Receptive radius, in full-resolution pixels, of decode() with respect to its inputs.

        Each 4x4 stride-2 transposed conv reaches ~1 input pixel; counted as 2 to stay an upper bound.
        """
        return (4 * stack_radius(self.decoder) + 2 * 4 + 2 * 2
                + 1 + stack_radius(self.refine) + 1)

    # ------------------------------------------------------------------ pieces
    def encode_stage(self, stage: int, h: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """Run encoder stage `stage`.

        stage 0: h = padded images (N, 3, H, W), H and W multiples of 4 -> (N, C, H/4, W/4).
        stage s > 0: h = stage s-1 output (N, C, h, w); pooled = set-pooled stage s-1 output,
        (1 or N, C, h, w) -> (N, C, h, w).  C = 4 * planes.
        """
        if stage == 0:
            return self.encoder[0](self.stem(h))
        if pooled is None:
            raise ValueError(f"encoder stage {stage} needs the set-pooled features of stage {stage - 1}")
        pooled = pooled.expand(h.shape[0], -1, -1, -1)
        h = h + self.fuse[stage - 1](torch.cat([h, pooled], dim=1))
        return self.encoder[stage](h)

    def encode_until(self, x: torch.Tensor, stage: int, pooled: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Stages 0..stage on padded images x (N, 3, H, W); pooled[s] feeds stage s (pooled[0] unused)."""
        h = self.encode_stage(0, x)
        for s in range(1, stage + 1):
            h = self.encode_stage(s, h, pooled[s])
        return h

    def decode(self, z: torch.Tensor, mean_image: torch.Tensor) -> torch.Tensor:
        """Pooled bottleneck z (B, C, h, w) + per-pixel mean of the inputs (B, 3, 4h, 4w) -> (B, 3, 4h, 4w)."""
        y = self.up(self.decoder(z))
        y = self.merge(torch.cat([y, mean_image.to(y.dtype)], dim=1))
        return mean_image + self.to_rgb(self.refine(y)).to(mean_image.dtype)

    @staticmethod
    def pool(h: torch.Tensor, how: str) -> torch.Tensor:
        """Pool over the set axis: (B, K, C, h, w) -> (B, C, h, w)."""
        return h.amax(dim=1) if how == "max" else h.mean(dim=1)

    # ------------------------------------------------------------------ batched forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, K, 3, H, W) in [0, 1] -> (B, 3, H, W). Holds all K images' features at once;
        model/online.py gives the same result in memory independent of K."""
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"expected x of shape (B, K, 3, H, W), got {tuple(x.shape)}")
        b, k, _, height, width = x.shape
        xp = pad_to_multiple(x)
        flat = xp.reshape(b * k, *xp.shape[2:])
        h = self.encode_stage(0, flat)
        for s in range(1, self.num_stages):
            g = self.pool(h.reshape(b, k, *h.shape[1:]), self.stage_pooling(s - 1))
            h = self.encode_stage(s, h, g.repeat_interleave(k, dim=0))
        z = self.pool(h.reshape(b, k, *h.shape[1:]), self.stage_pooling(self.num_stages - 1))
        out = self.decode(z, xp.mean(dim=1))
        return out[..., :height, :width]


def complete_arch_args(arch: str, arch_args: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's arch_args with the defaults of arguments the architecture gained after it was
    written (e.g. drs_fusion's context_size): what build_model rebuilds it with."""
    return {**ARCHITECTURES.get(arch, {}), **arch_args}


def build_model(arch: str = DEFAULT_ARCH, **overrides: Any) -> nn.Module:
    """Build a named architecture, e.g. build_model("drs_base", aggregation="max").

    The result's `arch` / `arch_args` (plain str/int/list values) rebuild it exactly:
    build_model(net.arch, **net.arch_args). Overrides given as None are ignored, so one config
    schema (which always passes `aggregation`) serves every architecture; "drs_fusion" has no
    aggregation choice (it pools with mean, max and softmax; model/fusion.py).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    defaults = ARCHITECTURES[arch]
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for architecture {arch!r}; known: {sorted(defaults)}")
    args = {**defaults, **overrides}
    # Lists, not tuples: plain values that survive a weights_only checkpoint round trip unchanged.
    args = {k: [int(d) for d in v] if isinstance(v, list | tuple) else v for k, v in args.items()}
    if arch in FUSION_ARCHITECTURES:
        from model.fusion import FusionNet  # fusion.py imports this module's padding helper

        net: nn.Module = FusionNet(**args)
    else:
        net = DeepResidualSet(**args)
    net.arch = arch
    net.arch_args = args
    return net
