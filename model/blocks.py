"""Building blocks of the Deep Residual Set network, and the receptive-field arithmetic tiling needs.

Every block here is a plain convolution stack with zero padding and no normalisation, so it is
translation-equivariant: a tile cut with a halo at least as wide as the receptive radius gives the
same output in its centre as the whole image does (model/tiling.py relies on that).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Scale applied to the last conv of each residual block at initialisation. With 10-30 blocks and
# no normalisation, full-scale residual branches make the initial activations explode; a small
# branch keeps each block close to the identity so training starts stable.
RESIDUAL_INIT_SCALE = 0.1


def conv3x3(cin: int, cout: int, dilation: int = 1, stride: int = 1) -> nn.Conv2d:
    """3x3 conv keeping the size (stride 1) or halving it (stride 2); padding = dilation."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation)


class ResBlock(nn.Module):
    """x + conv(relu(conv(x))), both 3x3 with the same dilation; (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.dilation = dilation
        self.conv1 = conv3x3(channels, channels, dilation)
        self.conv2 = conv3x3(channels, channels, dilation)
        self.act = nn.ReLU(inplace=True)
        with torch.no_grad():
            self.conv2.weight.mul_(RESIDUAL_INIT_SCALE)
            self.conv2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


def res_stack(channels: int, count: int, dilations: Sequence[int], start: int = 0) -> nn.Sequential:
    """`count` ResBlocks whose dilations cycle through `dilations`, beginning at index `start`.

    `start` lets an encoder split into several stages keep one continuous dilation cycle.
    """
    return nn.Sequential(*(ResBlock(channels, dilations[(start + i) % len(dilations)]) for i in range(count)))


def stack_radius(stack: nn.Sequential) -> int:
    """Receptive radius of a res_stack in its own pixels: each block adds 2 * dilation."""
    return sum(2 * block.dilation for block in stack)
