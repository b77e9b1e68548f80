"""Multi-class (softmax) and multi-label (per-channel sigmoid) losses, computed inside the FOV.

Multi-class: logits (B, K, H, W), label (B, 1, H, W) or (B, H, W) integer class indices.
Multi-label: logits and label (B, C, H, W), label {0, 1} per channel (classes may overlap).
The FOV is (B, 1, H, W) as for the binary losses. A pixel outside the FOV, or whose label is the
ignore index, adds neither loss nor gradient. All in float32 whatever the autocast dtype.

Soft Dice leaves the background class out by default, as nnU-Net does (`do_bg=False`): the
background covers most of a fundus image, its Dice is near 1 from the first steps, and averaged
with the others it dilutes the signal of the rare classes (arteries, veins, cup); the
cross-entropy term still scores the background pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from unetdist.errors import ConfigError

if TYPE_CHECKING:  # the registry in losses.py owns the names; typing only, no circle
    from unetdist.config import LossConfig

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]

DICE_SMOOTH = 1.0  # additive smoothing of soft Dice: an empty crop predicted empty scores 0 loss
_TINY = 1e-12  # a denominator guard: where it acts, the numerator is exactly 0 too


def _indices(label: Tensor) -> Tensor:
    """(B, H, W) int64 class indices from (B, 1, H, W) or (B, H, W)."""
    return (label[:, 0] if label.dim() == 4 else label).long()


def _counted(label: Tensor, fov: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """(float (B, H, W) mask of the pixels that count, labels safe to index with there).

    An ignored or out-of-FOV pixel gets class 0 so that gather/one-hot never see its value
    (e.g. 255); its mask of 0 then removes it from loss and gradient.
    """
    y = _indices(label)
    keep = fov[:, 0] > 0.5
    if ignore_index is not None:
        keep = keep & (y != ignore_index)
    return keep.float(), torch.where(keep, y, torch.zeros_like(y))


def _check_classes(logits: Tensor, weight: Tensor | None) -> None:
    # shapes only: known on the host, so no device sync
    k = logits.shape[1]
    if k < 2:
        raise ConfigError(f"model.num_classes must be >= 2 for a multi-class loss, got {k}")
    if weight is not None and weight.numel() != k:
        raise ConfigError(f"loss.class_weights must have one weight per class ({k}), "
                          f"got {weight.numel()}")


def masked_ce(logits: Tensor, label: Tensor, fov: Tensor, weight: Tensor | None = None,
              ignore_index: int | None = None) -> Tensor:
    """Softmax cross-entropy over the FOV pixels that are not ignored.

    With class weights the mean is weighted as torch's `F.cross_entropy(weight=...)`:
    sum(w_y * ce) / sum(w_y) over the counted pixels (0 when nothing counts).
    """
    _check_classes(logits, weight)
    m, y = _counted(label, fov, ignore_index)
    ce = F.cross_entropy(logits.float(), y, reduction="none")
    if weight is not None:
        m = m * weight.float()[y]
    return (ce * m).sum() / m.sum().clamp_min(_TINY)


def multiclass_soft_dice(logits: Tensor, label: Tensor, fov: Tensor,
                         ignore_index: int | None = None,
                         include_background: bool = False) -> Tensor:
    """1 - mean over classes of the soft Dice of softmax(logits) vs one-hot labels.

    Pooled over the counted pixels of the whole batch (as the binary `soft_dice`); class 0 is
    the background and is left out unless `include_background`.
    """
    _check_classes(logits, None)
    k = logits.shape[1]
    m, y = _counted(label, fov, ignore_index)
    m = m[:, None]
    p = torch.softmax(logits.float(), dim=1) * m
    onehot = F.one_hot(y, k).permute(0, 3, 1, 2).float() * m
    dims = (0, 2, 3)
    inter = (p * onehot).sum(dims)
    dice = (2.0 * inter + DICE_SMOOTH) / (p.sum(dims) + onehot.sum(dims) + DICE_SMOOTH)
    return 1.0 - (dice if include_background else dice[1:]).mean()


def multilabel_bce_dice(logits: Tensor, label: Tensor, fov: Tensor,
                        pos_weight: float | Tensor = 1.0, ignore: Tensor | None = None,
                        dice_weight: float = 1.0) -> Tensor:
    """Per-channel BCE + dice_weight * soft Dice, each averaged over the C channels.

    `pos_weight` is a float or a (C,) tensor (channel c's positives weighted by pos_weight[c]);
    `ignore` an optional bool mask, (B, C, H, W) or (B, 1, H, W), of pixels that do not count.
    Channel by channel this is exactly the binary `masked_bce + dice_weight * soft_dice`.
    """
    x, t = logits.float(), label.float()
    c = x.shape[1]
    pw = torch.as_tensor(pos_weight, dtype=torch.float32, device=x.device).reshape(-1, 1, 1)
    if pw.shape[0] not in (1, c):
        raise ConfigError(f"loss.class_weights must have one weight per channel ({c}), "
                          f"got {pw.shape[0]}")
    m = fov.float().expand_as(x)
    if ignore is not None:
        m = m * (~ignore.bool()).float()
    dims = (0, 2, 3)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none", pos_weight=pw)
    bce_c = (bce * m).sum(dims) / m.sum(dims).clamp_min(1.0)
    p, t = torch.sigmoid(x) * m, t * m
    dice_c = 1.0 - (2.0 * (p * t).sum(dims) + DICE_SMOOTH) / (p.sum(dims) + t.sum(dims)
                                                              + DICE_SMOOTH)
    return bce_c.mean() + dice_weight * dice_c.mean()


def _per_device(values: list[float]) -> Callable[[torch.device], Tensor | None]:
    """A constant tensor made once per device: a new one each step would be a host-to-device
    copy (a sync on CUDA)."""
    made: dict[torch.device, Tensor] = {}

    def on(device: torch.device) -> Tensor | None:
        if not values:
            return None
        if device not in made:
            made[device] = torch.tensor(values, dtype=torch.float32, device=device)
        return made[device]
    return on


def build_ce(cfg: LossConfig) -> LossFn:
    """`ce`: multi-class cross-entropy, weighted by loss.class_weights when given."""
    weight = _per_device(list(cfg.class_weights))
    return lambda lg, y, f: masked_ce(lg, y, f, weight(lg.device), cfg.ignore_index)


def build_ce_dice(cfg: LossConfig) -> LossFn:
    """`ce_dice`: cross-entropy + loss.dice_weight * foreground soft Dice (nnU-Net's pairing)."""
    ce = build_ce(cfg)
    return lambda lg, y, f: ce(lg, y, f) + cfg.dice_weight * multiclass_soft_dice(
        lg, y, f, cfg.ignore_index)


def unpack_bits(mask: Tensor, channels: int) -> Tensor:
    """(B, 1, H, W) bit masks (`classes.to_bitmask`: label c is bit c; any dtype holding whole
    numbers) -> (B, C, H, W) float {0, 1}, C = CHANNELS."""
    shifts = torch.arange(channels, device=mask.device, dtype=torch.int32).view(1, -1, 1, 1)
    return ((mask.to(torch.int32) >> shifts) & 1).float()


def build_multilabel_bce_dice(cfg: LossConfig) -> LossFn:
    """`multilabel_bce_dice`: loss.class_weights are the per-channel positive weights (empty:
    loss.pos_weight for every channel); label values equal to loss.ignore_index do not count.
    The label is (B, C, H, W) channels, or a training batch's (B, 1, H, W) bit masks."""
    pos = _per_device(list(cfg.class_weights) or [cfg.pos_weight])

    def loss(lg: Tensor, y: Tensor, f: Tensor) -> Tensor:
        if y.shape[1] == 1 and lg.shape[1] > 1:
            y = unpack_bits(y, lg.shape[1])  # a training batch: one bit mask per pixel
        ignore = None if cfg.ignore_index is None else y == cfg.ignore_index
        target = y if ignore is None else torch.where(ignore, torch.zeros_like(y), y)
        return multilabel_bce_dice(lg, target, f, pos(lg.device), ignore, cfg.dice_weight)
    return loss
