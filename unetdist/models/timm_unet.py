"""A UNet decoder over the feature pyramid of a timm `features_only` encoder.

The encoder is `timm.create_model(name, features_only=True, ...)`: any CNN backbone timm offers
(resnet, efficientnet, convnext, regnet ...). The decoder walks the pyramid from the deepest
feature to the finest, each block upsampling to the skip's size, concatenating it and applying
a DoubleConv; blocks without a skip then bring the map to full resolution. Inputs are padded to
a multiple of the encoder's total stride and the logits cropped back, so any H, W works.

Pretrained weights come only from a local file (`pretrained_path`), loaded by timm's own
loader (safetensors, or `torch.load(weights_only=True)`; classifier dropped, first conv adapted
to `in_chans`). Every remote source is cleared from the pretrained config, so nothing is ever
downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unetdist.errors import ConfigError, UserError
from unetdist.models.layers import DoubleConv, pad_to_multiple
from unetdist.models.unet import OutConv

# below this share of parameter elements taken from the file, pretrained loading failed
MIN_LOADED_FRACTION = 0.5


class DecoderBlock(nn.Module):
    """Upsample to a target size, concatenate the skip (if any), DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int,
                 norm: str = "batch") -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels + skip_channels, out_channels, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        size = tuple(skip.shape[-2:]) if skip is not None else size
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


def _local_weights_overlay(path: str) -> dict:
    """A pretrained-config overlay that points timm at PATH and nowhere else."""
    return {"file": path, "url": None, "hf_hub_id": None, "hf_hub_filename": None,
            "source": None}


def _check_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"model.encoder must be a timm model name, got {name!r}{hint}")


def _create(name: str, kwargs: dict, pretrained_path: str | None) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, **kwargs)
    except Exception as e:  # noqa: BLE001 - timm raises RuntimeError/KeyError/Assertion/pickle
        # torch's load_state_dict puts the useful part ("size mismatch for ...") on line 2
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        msg = " ".join(lines[:2])[:300] or type(e).__name__
        if kwargs.get("pretrained"):
            raise UserError(f"model.pretrained_path: cannot load {pretrained_path} into timm "
                            f"encoder {name!r}: {msg}") from None
        raise ConfigError(f"model.encoder: cannot build timm encoder {name!r} with "
                          f"features_only (out_indices={kwargs.get('out_indices', 'all')}): "
                          f"{msg}") from None


def _loaded_fraction(loaded: nn.Module, fresh: nn.Module) -> float:
    """Share of parameter elements that differ from an identically seeded random init."""
    total = changed = 0
    for a, b in zip(loaded.parameters(), fresh.parameters()):
        total += a.numel()
        changed += int((a != b).sum())
    return changed / max(total, 1)


def create_encoder(name: str, in_channels: int, levels: int = 0,
                   pretrained_path: str | None = None) -> nn.Module:
    """`timm.create_model(name, features_only=True, ...)`, weights only from a local file."""
    _check_name(name)
    kwargs: dict = {"features_only": True, "in_chans": in_channels, "pretrained": False}
    if levels > 0:
        kwargs["out_indices"] = tuple(range(levels))  # the finest `levels` feature maps
    if pretrained_path is None:
        return _create(name, kwargs, None)
    path = Path(pretrained_path).expanduser()
    if not path.is_file():
        raise UserError(f"model.pretrained_path: weights file not found: {path}")
    overlay = _local_weights_overlay(str(path))
    # timm loads non-strictly once the classifier is dropped, so a file of another
    # architecture would leave a silently random encoder: compare with the same random init
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = _create(name, {**kwargs, "pretrained": True,
                                 "pretrained_cfg_overlay": overlay}, str(path))
        torch.manual_seed(0)
        fresh = _create(name, kwargs, None)
    loaded = _loaded_fraction(encoder, fresh)
    if loaded < MIN_LOADED_FRACTION:
        raise UserError(f"model.pretrained_path: {path} holds no usable weights for timm "
                        f"encoder {name!r} (only {loaded:.0%} of its parameters were loaded; "
                        f"is it a checkpoint of another architecture?)")
    return encoder


class TimmUNet(nn.Module):
    """UNet decoder over a timm encoder; logits (B, num_classes, H, W) for any H, W."""

    def __init__(self, encoder: str, in_channels: int, num_classes: int, *,
                 decoder_width: int = 16, levels: int = 0, norm: str = "batch",
                 dropout: float = 0.0, pretrained_path: str | None = None) -> None:
        super().__init__()
        self.encoder = create_encoder(encoder, in_channels, levels, pretrained_path)
        chs = self.encoder.feature_info.channels()
        reds = self.encoder.feature_info.reduction()
        if len(reds) > 1 and reds[-1] <= reds[0]:
            # ViT-style encoders give one resolution (and usually a fixed input size)
            raise ConfigError(f"model.encoder {encoder!r} has no feature pyramid (reductions "
                              f"{reds}); use a CNN backbone (resnet, efficientnet, convnext...)")
        self.stride = int(reds[-1])
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        blocks, prev = [], chs[-1]
        for skip_ch, red in zip(reversed(chs[:-1]), reversed(reds[:-1])):
            blocks.append(DecoderBlock(prev, skip_ch, decoder_width * red, norm))
            prev = decoder_width * red
        # finest feature maps are often at 1/2 or 1/4: blocks without skips reach full size
        self.extra_reductions: list[int] = []
        red = int(reds[0])
        while red > 1:
            red //= 2
            blocks.append(DecoderBlock(prev, 0, decoder_width * red, norm))
            prev = decoder_width * red
            self.extra_reductions.append(red)
        self.decoder = nn.ModuleList(blocks)
        self.head = OutConv(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = pad_to_multiple(x, self.stride)
        hp, wp = x.shape[-2:]
        feats = self.encoder(x)
        y = self.drop(feats[-1])
        n_skip = len(feats) - 1
        for block, skip in zip(self.decoder[:n_skip], reversed(feats[:-1])):
            y = block(y, skip)
        for block, red in zip(self.decoder[n_skip:], self.extra_reductions):
            y = block(y, size=(hp // red, wp // red))
        return self.head(y)[..., :h, :w]
