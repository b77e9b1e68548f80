"""The seed's UNet (milesial/Pytorch-UNet), exactly, with width/depth/norm/dropout options.

With the defaults (`width=64, depth=4, norm="batch", dropout=0`) the module tree, the
state-dict keys (`inc`, `down1..4`, `up1..4`, `outc`) and the forward pass are the tutorial's,
so a checkpoint of the seed loads with `strict=True`. `UNet(1, 1, bilinear=True)` has
17,261,825 parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unetdist.models.layers import DoubleConv


class Down(nn.Module):
    """Downscaling with maxpool then double conv."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(
            nn.MaxPool2d(2),
            DoubleConv(in_channels, out_channels, norm=norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upscaling, pad to the skip's size, concatenate, double conv."""

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = True,
                 norm: str = "batch") -> None:
        super().__init__()
        if bilinear:
            # the upsampled map keeps its channels, so the conv halves them in its middle
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2, norm=norm)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels, norm=norm)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = self.up(x1)
        # odd sizes (DRIVE is 584x565) lose a row/column in maxpool: pad back to the skip
        diff_y = x2.size(2) - x1.size(2)
        diff_x = x2.size(3) - x1.size(3)
        x1 = F.pad(x1, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
        x = torch.cat([x2, x1], dim=1)
        return self.conv(x)


class OutConv(nn.Module):
    """1x1 convolution to class logits."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """Classic UNet; `depth` Down/Up stages with `width * 2**i` channels at stage i.

    Any input size whose sides are at least 2**depth works; the output (B, n_classes, H, W)
    has the input's height and width.
    """

    def __init__(self, n_channels: int, n_classes: int, bilinear: bool = True, *,
                 width: int = 64, depth: int = 4, norm: str = "batch",
                 dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"UNet needs depth >= 1 and width >= 1, got {depth}, {width}")
        self.n_channels, self.n_classes, self.bilinear = n_channels, n_classes, bilinear
        self.depth = depth
        ch = [width * 2 ** i for i in range(depth + 1)]
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(n_channels, ch[0], norm=norm)
        for i in range(depth):
            out = ch[i + 1] // factor if i == depth - 1 else ch[i + 1]
            self.add_module(f"down{i + 1}", Down(ch[i], out, norm=norm))
        # Dropout has no parameters, so the seed's state dict and count are unchanged
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        for j in range(depth):
            i = depth - 1 - j  # the skip level this Up merges with
            out = ch[i] // factor if i > 0 else ch[0]
            self.add_module(f"up{j + 1}", Up(ch[i + 1], out, bilinear, norm=norm))
        self.outc = OutConv(ch[0], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        min_side = 2 ** self.depth
        if x.shape[-2] < min_side or x.shape[-1] < min_side:
            raise ValueError(f"UNet of depth {self.depth} needs inputs of at least "
                             f"{min_side}x{min_side}, got {tuple(x.shape[-2:])}")
        skips = [self.inc(x)]
        for i in range(1, self.depth + 1):
            skips.append(getattr(self, f"down{i}")(skips[-1]))
        x = self.drop(skips.pop())
        for j in range(1, self.depth + 1):
            x = getattr(self, f"up{j}")(x, skips.pop())
        return self.outc(x)
