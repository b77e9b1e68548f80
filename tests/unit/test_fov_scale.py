"""FOV estimation (agreement with real masks on DRIVE-format twins) and eval.scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import twins
from tests.eval_helpers import tiny_config, tiny_model
from unetdist.config import EvalConfig, load_config
from unetdist.data.ingest.fov import agreement, estimate_fov, fov_diameter
from unetdist.data.ingest.readers import read_image, read_mask
from unetdist.errors import ConfigError
from unetdist.eval.inference import image_scale, sliding_window_predict


@pytest.mark.parametrize("size", [(120, 112), (584, 565)])
def test_estimated_fov_agrees_with_the_real_masks(tmp_path, size, record_property):
    """The estimator against DRIVE-format FOV masks: Dice and IoU, worst and mean."""
    raw = twins.make_drive(tmp_path / "DRIVE", n_train=0, n_test=4 if size[0] > 200 else 10,
                           size=size)
    scores = []
    for img in sorted((raw / "test" / "images").iterdir()):
        est = estimate_fov(read_image(img))
        true = read_mask(raw / "test" / "mask" / f"{img.stem}_mask.gif").astype(bool)
        assert est is not None and est.shape == true.shape
        scores.append(agreement(est, true))
        assert not (est & ~true).any() or (est & ~true).mean() < 0.002  # eroded: inside
    dice, iou = np.array(scores).T
    record_property("fov_dice_mean", float(dice.mean()))
    record_property("fov_iou_mean", float(iou.mean()))
    print(f"FOV estimate vs mask at {size}: Dice mean {dice.mean():.4f} min {dice.min():.4f}, "
          f"IoU mean {iou.mean():.4f} min {iou.min():.4f}")
    assert dice.min() > 0.98 and iou.min() > 0.96


def test_agreement_and_diameter_against_numpy():
    a = np.zeros((50, 60), bool)
    b = np.zeros((50, 60), bool)
    a[10:30, 10:30], b[20:40, 10:30] = True, True
    inter, union = (a & b).sum(), (a | b).sum()
    assert agreement(a, b) == pytest.approx((2 * inter / (a.sum() + b.sum()), inter / union))
    yy, xx = np.mgrid[:200, :200]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 <= 80**2
    assert fov_diameter(disc) == pytest.approx(160, rel=0.01)


def test_no_dark_border_means_no_estimate():
    assert estimate_fov(np.full((40, 50, 3), 128, np.uint8)) is None


def test_shard_stores_the_estimate_as_fov_png(tmp_path):
    from unetdist.data.codec import decode_sample
    from unetdist.data.ingest.writer import shard_dataset
    from unetdist.data.manifest import shard_paths
    from unetdist.data.reader import ShardInfo, iter_raw

    raw = twins.make_chase(tmp_path / "CHASE", children=11, size=(80, 84))
    m = shard_dataset(raw, tmp_path / "s", layout="chase", progress=False, split_val=0)
    assert m["fov_source"] == "estimated" and m["fov_sources"] == {"estimated": 22}
    path = shard_paths(tmp_path / "s", "test")[0]
    shard = ShardInfo(path, path.rsplit("/", 1)[-1], 2, (tmp_path / "s" / path).stat().st_size)
    for raw_sample in iter_raw(shard):
        s = decode_sample(raw_sample)
        want = estimate_fov(read_image(raw / f"{s['key']}.jpg"))
        assert np.array_equal(s["fov"].astype(bool), want)
        assert s["meta"]["fov_source"] == "estimated"
        assert s["meta"]["fov_diameter"] == round(fov_diameter(want), 1)


@pytest.mark.parametrize("value, want", [("auto", "auto"), ("0.5", 0.5), ("2", 2.0)])
def test_eval_scale_values(value, want):
    assert load_config(None, [f"eval.scale={value}"]).eval.scale == want


@pytest.mark.parametrize("override, message", [
    (["eval.scale=0"], "eval.scale must be a factor in"),
    (["eval.scale=big"], "eval.scale must be a factor in"),
    (["eval.scale=0.5", "eval.resize=64"], "eval.scale must be 1.0 with eval.resize=64"),
])
def test_eval_scale_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_auto_scale_is_the_ratio_of_fov_diameters():
    yy, xx = np.mgrid[:300, :320]
    fov = torch.from_numpy(((yy - 150) ** 2 + (xx - 160) ** 2 <= 140**2).astype(np.float32))
    cfg = EvalConfig(scale="auto", ref_fov_diameter=70.0)
    assert image_scale(cfg, fov[None, None]) == pytest.approx(70 / 280, rel=0.01)
    assert image_scale(EvalConfig(scale=0.7), fov) == 0.7
    with pytest.raises(ConfigError, match="eval.scale=auto needs eval.ref_fov_diameter"):
        image_scale(EvalConfig(scale="auto"), fov)


def test_scaled_inference_returns_the_native_size():
    import torch.nn.functional as F

    cfg = tiny_config()
    model = tiny_model(cfg, seed=3)
    x = torch.randn(1, 1, 90, 101)
    native = EvalConfig(tile=48, overlap=0.25, batch_size=2)
    out = sliding_window_predict(model, x, native, scale=0.5)
    small = F.interpolate(x, size=(45, 50), mode="bilinear", align_corners=False,
                          antialias=True)
    manual = F.interpolate(sliding_window_predict(model, small, native), size=(90, 101),
                           mode="bilinear", align_corners=False)
    assert out.shape == (1, 1, 90, 101)
    torch.testing.assert_close(out, manual, atol=1e-6, rtol=0)
