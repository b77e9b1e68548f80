"""Multi-class and multi-label losses against torch's cross-entropy, numpy Dice by hand and the
binary losses; FOV and ignore pixels add neither loss nor gradient; config names and checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unetdist.config import LossConfig, load_config
from unetdist.config.names import registered
from unetdist.errors import ConfigError
from unetdist.train.losses import DICE_SMOOTH, build_loss, masked_bce, soft_dice
from unetdist.train.multiclass_losses import masked_ce, multiclass_soft_dice, multilabel_bce_dice

B, K, H, W = 2, 4, 12, 10
IGNORE = 255


def _case(seed: int = 0, ignore_share: float = 0.1):
    """(logits, label (B,1,H,W) int64 with some IGNORE pixels, fov (B,1,H,W) float)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, H, W, generator=g) * 2
    label = torch.randint(0, K, (B, 1, H, W), generator=g)
    label[torch.rand(B, 1, H, W, generator=g) < ignore_share] = IGNORE
    fov = torch.zeros(B, 1, H, W)
    fov[..., 1:-2, 2:-1] = 1
    return logits, label, fov


def _fov_pixels(logits, label, fov):
    """(N, K) logits and (N,) labels of the FOV pixels only."""
    inside = fov[:, 0] > 0
    return logits.permute(0, 2, 3, 1)[inside], label[:, 0][inside]


# ------------------------------------------------------------------------------ cross-entropy


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [None, IGNORE])
def test_ce_equals_torch_cross_entropy_on_a_full_fov(weighted, ignore):
    logits, label, _ = _case(1, 0.1 if ignore is not None else 0.0)
    weight = torch.tensor([0.2, 1.0, 3.0, 0.5]) if weighted else None
    want = F.cross_entropy(logits, label[:, 0], weight=weight,
                           ignore_index=-100 if ignore is None else ignore)
    full = torch.ones(B, 1, H, W)
    assert masked_ce(logits, label, full, weight, ignore).item() == pytest.approx(want.item(),
                                                                                  rel=1e-5)
    # a (B, H, W) label map is the same thing
    assert masked_ce(logits, label[:, 0], full, weight, ignore).item() == pytest.approx(
        want.item(), rel=1e-5)


@pytest.mark.parametrize("weighted", [False, True])
def test_ce_over_the_fov_equals_ce_of_the_fov_pixels_only(weighted):
    logits, label, fov = _case(2, 0.0)
    weight = torch.tensor([1.0, 2.0, 0.5, 4.0]) if weighted else None
    x, y = _fov_pixels(logits, label, fov)
    want = F.cross_entropy(x, y, weight=weight)
    assert masked_ce(logits, label, fov, weight).item() == pytest.approx(want.item(), rel=1e-5)


def test_two_class_ce_and_dice_equal_the_binary_losses_on_the_logit_difference():
    # softmax over (l0, l1) is sigmoid(l1 - l0): a binary dataset is a 2-class table
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(B, 2, H, W, generator=g)
    label = torch.randint(0, 2, (B, 1, H, W), generator=g)
    _, _, fov = _case()
    diff = logits[:, 1:] - logits[:, :1]
    assert masked_ce(logits, label, fov).item() == pytest.approx(
        masked_bce(diff, label.float(), fov).item(), rel=1e-5)
    assert multiclass_soft_dice(logits, label, fov).item() == pytest.approx(
        soft_dice(diff, label.float(), fov).item(), rel=1e-5)


def test_class_weights_move_the_loss_toward_the_weighted_class():
    # class 1 predicted badly, class 0 well: weighting class 1 up raises the mean, down lowers it
    label = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    label[..., :2, :] = 1
    logits = torch.zeros(1, 2, 4, 4)
    logits[:, 0] = 3.0  # everything called background
    fov = torch.ones(1, 1, 4, 4)
    plain = masked_ce(logits, label, fov).item()
    up = masked_ce(logits, label, fov, torch.tensor([1.0, 5.0])).item()
    down = masked_ce(logits, label, fov, torch.tensor([5.0, 1.0])).item()
    assert down < plain < up
    assert masked_ce(logits, label, fov, torch.tensor([0.0, 1.0])).item() == pytest.approx(
        -np.log(1 / (1 + np.exp(3.0))), rel=1e-5)  # only the wrong class-1 pixels count


def test_a_crop_where_nothing_counts_has_zero_loss_not_nan():
    logits, label, fov = _case(4)
    assert masked_ce(logits, label, torch.zeros_like(fov)).item() == 0.0
    only_zero_weight = torch.zeros_like(label)
    assert masked_ce(logits, only_zero_weight, fov, torch.tensor([0.0, 1, 1, 1])).item() == 0.0


# ------------------------------------------------------------------------------------ Dice


def _numpy_dice_loss(logits, label, fov, ignore, include_background):
    x = logits.double().numpy()
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = label[:, 0].numpy()
    keep = (fov[:, 0].numpy() > 0) & (y != ignore)
    dices = []
    for c in range(0 if include_background else 1, logits.shape[1]):
        pc, yc = p[:, c][keep], (y[keep] == c).astype(np.float64)
        dices.append((2 * (pc * yc).sum() + DICE_SMOOTH) / (pc.sum() + yc.sum() + DICE_SMOOTH))
    return 1.0 - float(np.mean(dices))


@pytest.mark.parametrize("include_background", [False, True])
def test_multiclass_dice_equals_a_numpy_computation(include_background):
    logits, label, fov = _case(5, 0.15)
    got = multiclass_soft_dice(logits, label, fov, IGNORE, include_background).item()
    assert got == pytest.approx(_numpy_dice_loss(logits, label, fov, IGNORE, include_background),
                                rel=1e-5)


@pytest.mark.parametrize("name", ["ce", "ce_dice"])
def test_a_perfect_prediction_scores_near_zero_and_a_wrong_one_near_the_maximum(name):
    _, label, fov = _case(6, 0.1)
    cfg = LossConfig(name=name, ignore_index=IGNORE)
    safe = torch.where(label == IGNORE, 0, label)[:, 0]
    right = F.one_hot(safe, K).permute(0, 3, 1, 2).float() * 40.0
    wrong = F.one_hot((safe + 1) % K, K).permute(0, 3, 1, 2).float() * 40.0
    assert build_loss(cfg)(right, label, fov).item() < 1e-3
    # CE of a confident wrong call is ~ the logit margin; Dice 1 - smoothing/(counts + smoothing)
    assert build_loss(cfg)(wrong, label, fov).item() > 39.0
    assert multiclass_soft_dice(wrong, label, fov, IGNORE).item() > 0.95
    assert multiclass_soft_dice(right, label, fov, IGNORE).item() < 1e-3


# ----------------------------------------------------------------------- gradients and masks


def _multilabel_case(seed: int = 7, c: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, c, H, W, generator=g)
    label = (torch.rand(B, c, H, W, generator=g) < 0.3).float()
    label[torch.rand(B, c, H, W, generator=g) < 0.1] = IGNORE
    return logits, label


@pytest.mark.parametrize("name", ["ce", "ce_dice", "multilabel_bce_dice"])
def test_pixels_outside_the_fov_or_ignored_get_no_loss_and_no_gradient(name):
    logits, label, fov = _case(8, 0.15)
    if name == "multilabel_bce_dice":
        logits, label = _multilabel_case()
    loss_fn = build_loss(LossConfig(name=name, ignore_index=IGNORE, class_weights=[1, 2, 3]
                                    if name == "multilabel_bce_dice" else [1, 2, 0.5, 3]))
    dead = (fov == 0).expand_as(logits).clone()
    ignored = (label == IGNORE).expand_as(logits)  # multi-class: every class's logit there
    dead |= ignored
    a = logits.clone().requires_grad_(True)
    la = loss_fn(a, label, fov)
    la.backward()
    assert torch.all(a.grad[dead] == 0) and ignored.any()
    assert a.grad[~dead].abs().sum() > 0
    b = logits.clone()
    b[dead] = 50.0  # anything there
    assert loss_fn(b, label, fov).item() == pytest.approx(la.item(), rel=1e-6)


def test_low_precision_logits_give_a_float32_loss():
    logits, label, fov = _case(9)
    loss = build_loss(LossConfig(name="ce_dice", ignore_index=IGNORE))(
        logits.bfloat16(), label, fov)
    assert loss.dtype == torch.float32


# -------------------------------------------------------------------------------- multi-label


def test_one_channel_multilabel_equals_the_binary_bce_dice():
    logits, label = _multilabel_case(10, 1)
    label = label.clamp_max(1)
    _, _, fov = _case()
    want = masked_bce(logits, label, fov, 2.5) + 0.4 * soft_dice(logits, label, fov)
    got = multilabel_bce_dice(logits, label, fov, torch.tensor([2.5]), dice_weight=0.4)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_multilabel_is_the_mean_of_the_per_channel_binary_losses_with_ignore():
    logits, label = _multilabel_case(11, 3)
    _, _, fov = _case()
    ignore = label == IGNORE
    target = torch.where(ignore, 0.0, label)
    pw = [0.5, 1.0, 3.0]
    want = 0.0
    for c in range(3):
        f = fov * (~ignore[:, c:c + 1]).float()  # ignored pixels leave that channel's FOV
        lg, y = logits[:, c:c + 1], target[:, c:c + 1]
        want += (masked_bce(lg, y, f, pw[c]) + 0.7 * soft_dice(lg, y, f)).item() / 3
    got = multilabel_bce_dice(logits, target, fov, torch.tensor(pw), ignore, 0.7).item()
    assert got == pytest.approx(want, rel=1e-6)
    # the registry's loss reads the ignore value from the label itself
    cfg = LossConfig(name="multilabel_bce_dice", class_weights=pw, ignore_index=IGNORE,
                     dice_weight=0.7)
    assert build_loss(cfg)(logits, label, fov).item() == pytest.approx(want, rel=1e-6)


# --------------------------------------------------------------------------- registry, config


def test_build_loss_returns_the_named_multiclass_losses():
    logits, label, fov = _case(12, 0.1)
    w = [1.0, 2.0, 0.5, 3.0]
    cfg = LossConfig(name="ce", class_weights=w, ignore_index=IGNORE, dice_weight=0.3)
    ce = masked_ce(logits, label, fov, torch.tensor(w), IGNORE)
    assert build_loss(cfg)(logits, label, fov).item() == pytest.approx(ce.item(), rel=1e-6)
    cfg.name = "ce_dice"
    want = ce + 0.3 * multiclass_soft_dice(logits, label, fov, IGNORE)
    assert build_loss(cfg)(logits, label, fov).item() == pytest.approx(want.item(), rel=1e-6)
    assert {"ce", "ce_dice", "multilabel_bce_dice"} <= set(registered("loss"))


def test_unweighted_ce_from_the_registry_is_the_plain_mean():
    logits, label, fov = _case(13, 0.0)
    x, y = _fov_pixels(logits, label, fov)
    got = build_loss(LossConfig(name="ce"))(logits, label, fov).item()
    assert got == pytest.approx(F.cross_entropy(x, y).item(), rel=1e-5)


def test_config_accepts_the_new_fields():
    cfg = load_config(None, ["loss.name=ce_dice", "loss.class_weights=[0,1,2.5]",
                             "loss.ignore_index=255", "model.num_classes=3"])
    assert cfg.loss.class_weights == [0.0, 1.0, 2.5] and cfg.loss.ignore_index == 255
    assert load_config().loss.class_weights == [] and load_config().loss.ignore_index is None


@pytest.mark.parametrize("override, field, why", [
    ("loss.class_weights=[1,-0.5]", "loss.class_weights", ">= 0"),
    ("loss.class_weights=[0,0,0]", "loss.class_weights", "weight > 0"),
    ("loss.class_weights=[1,nan]", "loss.class_weights", "finite"),
    ("loss.class_weights=[1,inf]", "loss.class_weights", "finite"),
    ("loss.class_weights={a: 1}", "loss.class_weights", "list"),
    ("loss.class_weights=[[1]]", "loss.class_weights", ">= 0"),
    ("loss.class_weights=[{a: 1}]", "loss.class_weights", ">= 0"),
    ("loss.ignore_index=256", "loss.ignore_index", "255"),
    ("loss.ignore_index=-1", "loss.ignore_index", "null"),
    ("loss.ignore_index=x", "loss.ignore_index", ""),
])
def test_config_rejects_bad_values_naming_the_field(override, field, why):
    with pytest.raises(ConfigError, match=f"{field}.*{why}") as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)


def test_too_many_class_weights_is_refused():
    with pytest.raises(ConfigError, match="loss.class_weights length"):
        load_config(None, ["loss.class_weights=[" + ",".join(["1"] * 257) + "]"])


def test_a_weight_count_that_is_not_the_class_count_names_the_field():
    logits, label, fov = _case(14)
    with pytest.raises(ConfigError, match="loss.class_weights.*4.*got 3"):
        build_loss(LossConfig(name="ce", class_weights=[1, 2, 3]))(logits, label, fov)
    with pytest.raises(ConfigError, match="loss.class_weights.*3.*got 2"):
        multilabel_bce_dice(logits[:, :3], label.expand(B, 3, H, W).clamp_max(1).float(), fov,
                            torch.tensor([1.0, 2.0]))
    with pytest.raises(ConfigError, match="model.num_classes"):
        build_loss(LossConfig(name="ce_dice"))(logits[:, :1], label.clamp_max(0), fov)


@pytest.mark.parametrize("overrides, message", [
    (["loss.name=ce_dice"], "model.num_classes must be >= 2 for loss.name=ce_dice"),
    (["model.num_classes=2"], "model.num_classes must be 1 for loss.name=bce_dice"),
    (["loss.name=ce", "model.num_classes=2", "loss.class_weights=[1,2,3]"],
     "loss.class_weights must be one weight per output channel"),
    (["loss.name=multilabel_bce_dice", "model.num_classes=2", "loss.class_weights=[1]"],
     "loss.class_weights must be one weight per output channel"),
    (["loss.class_weights=[1,2]"], "loss.class_weights must be empty for loss.name=bce_dice"),
    (["loss.name=cldice", "loss.ignore_index=255"], "loss.ignore_index must be null"),
])
def test_loss_and_model_outputs_must_agree_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_agreeing_loss_and_outputs_load():
    assert load_config(None, ["loss.name=ce", "model.num_classes=2",
                              "loss.class_weights=[1,3]"]).model.num_classes == 2
    assert load_config(None, ["loss.name=multilabel_bce_dice"]).model.num_classes == 1
