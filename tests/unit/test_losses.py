"""Losses: values against hand computation, FOV masking, clDice skeleton and non-collapse."""

from __future__ import annotations

import math

import pytest
import torch

from unetdist.config import LossConfig
from unetdist.train.losses import build_loss, cldice, masked_bce, soft_dice, soft_skeleton


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]


LOGITS = _t([[2.0, -1.0], [0.5, 3.0]])
LABEL = _t([[1.0, 0.0], [0.0, 1.0]])
FOV = _t([[1.0, 1.0], [1.0, 0.0]])  # the bottom-right pixel is outside the FOV


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_bce_matches_hand_computation_inside_fov():
    pw = 2.5
    by_hand = (-pw * math.log(_sig(2.0)) - math.log(1 - _sig(-1.0)) - math.log(1 - _sig(0.5))) / 3
    assert masked_bce(LOGITS, LABEL, FOV, pw).item() == pytest.approx(by_hand, rel=1e-6)


def test_soft_dice_matches_hand_computation_inside_fov():
    p = [_sig(2.0), _sig(-1.0), _sig(0.5)]  # FOV pixels; label 1, 0, 0
    by_hand = 1 - (2 * p[0] + 1) / (sum(p) + 1 + 1)
    assert soft_dice(LOGITS, LABEL, FOV).item() == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("name", ["bce", "dice", "bce_dice", "cldice"])
def test_pixels_outside_fov_get_no_loss_and_no_gradient(name):
    torch.manual_seed(0)
    label = (torch.rand(2, 1, 16, 16) > 0.7).float()
    fov = torch.zeros(2, 1, 16, 16)
    fov[..., 2:14, 2:14] = 1
    loss_fn = build_loss(LossConfig(name=name))
    a = torch.randn(2, 1, 16, 16, requires_grad=True)
    la = loss_fn(a, label, fov)
    la.backward()
    b = a.detach().clone()
    b[fov == 0] = 50.0  # anything outside the FOV
    assert loss_fn(b, label, fov).item() == pytest.approx(la.item(), rel=1e-6)
    assert torch.all(a.grad[fov == 0] == 0)
    assert a.grad[fov == 1].abs().sum() > 0


def test_combined_losses_are_weighted_sums():
    cfg = LossConfig(name="bce_dice", pos_weight=1.5, dice_weight=0.3)
    expected = masked_bce(LOGITS, LABEL, FOV, 1.5) + 0.3 * soft_dice(LOGITS, LABEL, FOV)
    assert build_loss(cfg)(LOGITS, LABEL, FOV).item() == pytest.approx(expected.item(), rel=1e-6)
    cfg = LossConfig(name="cldice", pos_weight=1.5, dice_weight=0.3, cldice_weight=0.7,
                     cldice_iters=2)
    expected = expected + 0.7 * cldice(LOGITS, LABEL, FOV, 2)
    assert build_loss(cfg)(LOGITS, LABEL, FOV).item() == pytest.approx(expected.item(), rel=1e-6)


def _vessel_label(size: int = 32) -> torch.Tensor:
    """A cross of 1-px and 3-px lines: a tiny vessel tree."""
    y = torch.zeros(1, 1, size, size)
    y[..., size // 2, 2:-2] = 1  # thin horizontal vessel
    y[..., 4:-4, 9:12] = 1  # thicker vertical vessel
    return y


def test_soft_skeleton_of_a_thin_line_is_the_line_and_of_a_thick_one_is_thin():
    line = torch.zeros(1, 1, 9, 9)
    line[..., 4, 1:8] = 1
    assert torch.equal(soft_skeleton(line, 3), line)
    bar = torch.zeros(1, 1, 15, 15)
    bar[..., 4:11, 2:13] = 1  # 7 px thick
    skel = soft_skeleton(bar, 5)
    assert 0 < skel.sum() < bar.sum() / 3
    assert torch.all(skel <= bar)


def test_cldice_perfect_prediction_near_zero():
    y, fov = _vessel_label(), torch.ones(1, 1, 32, 32)
    logits = (y * 2 - 1) * 20
    assert cldice(logits, y, fov, 3).item() < 0.05


def test_cldice_cannot_collapse_to_zero_by_predicting_everything_or_nothing():
    y, fov = _vessel_label(), torch.ones(1, 1, 32, 32)
    perfect = cldice((y * 2 - 1) * 20, y, fov, 3).item()
    everything = cldice(torch.full_like(y, 20.0), y, fov, 3).item()
    nothing = cldice(torch.full_like(y, -20.0), y, fov, 3).item()
    # an all-vessel prediction has an (almost) empty soft skeleton: the textbook smoothing
    # would score its topology precision as perfect and the loss near 0
    assert everything > 0.5 and nothing > 0.9
    assert everything > perfect + 0.4


def test_cldice_ignores_images_without_vessels_and_has_finite_gradients():
    y, fov = _vessel_label(), torch.ones(1, 1, 32, 32)
    torch.manual_seed(1)
    logits = torch.randn(1, 1, 32, 32)
    alone = cldice(logits, y, fov, 3)
    pair_logits = torch.cat([logits, torch.randn(1, 1, 32, 32)]).requires_grad_(True)
    pair = cldice(pair_logits, torch.cat([y, torch.zeros_like(y)]), torch.cat([fov, fov]), 3)
    assert pair.item() == pytest.approx(alone.item(), rel=1e-6)
    pair.backward()
    assert torch.isfinite(pair_logits.grad).all()
    assert torch.all(pair_logits.grad[1] == 0)  # the vessel-free image adds nothing


def test_losses_are_float32_under_bf16_logits():
    logits = LOGITS.to(torch.bfloat16)
    for name in ("bce", "dice", "bce_dice", "cldice"):
        assert build_loss(LossConfig(name=name))(logits, LABEL, FOV).dtype == torch.float32
