"""Building blocks shared by the classic UNet and the timm-encoder UNet."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group", "instance")
MAX_GROUPS = 32  # GroupNorm groups: gcd(channels, 32), so any width gets a valid divisor


def make_norm(kind: str, channels: int) -> nn.Module:
    """A 2-D normalisation layer of the given kind over `channels` channels."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, MAX_GROUPS), channels)
    if kind == "instance":
        # affine so the layer has the same learnable scale/shift as BatchNorm
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"norm must be one of {'|'.join(NORMS)}, got {kind!r}")


class DoubleConv(nn.Module):
    """(convolution => [norm] => ReLU) * 2, as in the seed tutorial.

    The convolutions carry no bias: the normalisation that follows has its own shift, and the
    tutorial's parameter count (17,261,825) depends on it.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None,
                 norm: str = "batch") -> None:
        super().__init__()
        if not mid_channels:
            mid_channels = out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            make_norm(norm, mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad the bottom/right edges so H and W are multiples of `multiple`.

    Replicated borders rather than zeros: a zero band would be an artificial edge that the
    network sees as structure. Returns the padded tensor and the original H, W for cropping.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    # No `if ph or pw`: ONNX/torch.export would freeze that branch at the export sample's size.
    x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, h, w


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in params.values())
