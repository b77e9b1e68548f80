"""Training losses, computed inside the field of view (FOV).

Every loss takes `(logits, label, fov)` of shape (B, 1, H, W): logits are raw network outputs,
label and fov are {0, 1} floats. Pixels outside the FOV neither add loss nor gradient: the black
border of a fundus photograph is trivially background and would otherwise dominate the mean.
Losses are computed in float32 whatever the autocast dtype of the forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

# the multi-class module shares the Dice smoothing and the loss signature; the registry below
# imports its builders, so these live there (importing back would be a circle)
from unetdist.train.multiclass_losses import (
    DICE_SMOOTH,
    LossFn,
    build_ce,
    build_ce_dice,
    build_multilabel_bce_dice,
)

if TYPE_CHECKING:  # the registry owns names the config asks for: typing only, no circle
    from unetdist.config import LossConfig


def masked_bce(logits: Tensor, label: Tensor, fov: Tensor,
               pos_weight: float | Tensor = 1.0) -> Tensor:
    """Mean binary cross-entropy over FOV pixels, vessel pixels weighted by `pos_weight`.

    Pass `pos_weight` as a tensor already on the logits' device in a hot loop: building one
    from a float is a host-to-device copy (a sync on CUDA) on every call.
    """
    pw = pos_weight if isinstance(pos_weight, Tensor) else torch.tensor(
        pos_weight, dtype=torch.float32, device=logits.device)
    per_px = F.binary_cross_entropy_with_logits(logits.float(), label.float(), reduction="none",
                                                pos_weight=pw)
    fov = fov.float()
    return (per_px * fov).sum() / fov.sum().clamp_min(1.0)


def soft_dice(logits: Tensor, label: Tensor, fov: Tensor) -> Tensor:
    """1 - soft Dice of sigmoid(logits) vs label over the FOV pixels of the whole batch."""
    p = torch.sigmoid(logits.float()) * fov
    y = label.float() * fov
    inter = (p * y).sum()
    return 1.0 - (2.0 * inter + DICE_SMOOTH) / (p.sum() + y.sum() + DICE_SMOOTH)


def _soft_erode(x: Tensor) -> Tensor:
    # min-pooling along each axis separately: a plus-shaped structuring element, as in clDice
    a = -F.max_pool2d(-x, (3, 1), stride=1, padding=(1, 0))
    b = -F.max_pool2d(-x, (1, 3), stride=1, padding=(0, 1))
    return torch.minimum(a, b)


def _soft_dilate(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 3, stride=1, padding=1)


def soft_skeleton(x: Tensor, iters: int) -> Tensor:
    """Differentiable skeleton of a soft mask in [0, 1] (Shit et al., clDice, CVPR 2021)."""
    skel = F.relu(x - _soft_dilate(_soft_erode(x)))
    for _ in range(iters):
        x = _soft_erode(x)
        delta = F.relu(x - _soft_dilate(_soft_erode(x)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def cldice(logits: Tensor, label: Tensor, fov: Tensor, iters: int = 3) -> Tensor:
    """1 - centerline Dice, per image, averaged over the images that contain vessels.

    Guards against the collapse of the textbook formula: a thick blob (or an all-vessel
    prediction) has an empty soft skeleton, and with numerator smoothing its topology precision
    would read as a perfect 1 and the loss as 0. Here precision and sensitivity carry smoothing
    only in the denominator, so an empty skeleton scores 0 (loss 1); images without vessels
    (empty true skeleton) are left out instead of adding a constant.
    """
    p = torch.sigmoid(logits.float()) * fov
    y = label.float() * fov
    sp, sy = soft_skeleton(p, iters), soft_skeleton(y, iters)
    dims = (1, 2, 3)
    tprec = (sp * y).sum(dims) / (sp.sum(dims) + 1.0)
    tsens = (sy * p).sum(dims) / (sy.sum(dims) + 1.0)
    per_image = 1.0 - 2.0 * tprec * tsens / (tprec + tsens + 1e-6)
    has_vessels = (sy.sum(dims) > 0.5).float()
    return (per_image * has_vessels).sum() / has_vessels.sum().clamp_min(1.0)


def _bce(cfg: LossConfig) -> LossFn:
    """The pos_weight tensor is made once per device and reused (no per-step tensor creation:
    each would be a host-to-device copy)."""
    weights: dict[torch.device, Tensor] = {}

    def bce(lg: Tensor, y: Tensor, f: Tensor) -> Tensor:
        pw = weights.get(lg.device)
        if pw is None:
            pw = weights[lg.device] = torch.tensor(cfg.pos_weight, dtype=torch.float32,
                                                   device=lg.device)
        return masked_bce(lg, y, f, pw)
    return bce


def _dice(cfg: LossConfig) -> LossFn:
    return soft_dice


def _bce_dice(cfg: LossConfig) -> LossFn:
    bce = _bce(cfg)
    return lambda lg, y, f: bce(lg, y, f) + cfg.dice_weight * soft_dice(lg, y, f)


def _bce_dice_cldice(cfg: LossConfig) -> LossFn:
    """Region terms always accompany clDice."""
    region = _bce_dice(cfg)
    return lambda lg, y, f: region(lg, y, f) + cfg.cldice_weight * cldice(lg, y, f,
                                                                          cfg.cldice_iters)


# the allowed loss.name values (config validation asks this table)
LOSSES: dict[str, Callable[[LossConfig], LossFn]] = {
    "bce": _bce, "dice": _dice, "bce_dice": _bce_dice, "cldice": _bce_dice_cldice,
    # multi-class (label: class indices) and multi-label (label: one {0,1} channel per class)
    "ce": build_ce, "ce_dice": build_ce_dice, "multilabel_bce_dice": build_multilabel_bce_dice,
}


# what each loss reads from the model's K output channels (config checks K against it)
LOSS_OUTPUTS: dict[str, str] = {"bce": "sigmoid", "dice": "sigmoid", "bce_dice": "sigmoid",
                                "cldice": "sigmoid", "ce": "softmax", "ce_dice": "softmax",
                                "multilabel_bce_dice": "multilabel"}


def build_loss(cfg: LossConfig) -> LossFn:
    """The loss named by `cfg.name`."""
    return LOSSES[cfg.name](cfg)
