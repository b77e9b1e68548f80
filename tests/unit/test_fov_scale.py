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


def _jpeg(rgb: np.ndarray) -> np.ndarray:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.mark.parametrize("like", ["stare", "hrf"])
@pytest.mark.parametrize("side", [120, 605])
def test_a_disc_cut_at_the_top_and_bottom_gets_an_estimate(like, side):
    """STARE's and HRF's frames cut the disc at two opposite edges; STARE's outer ring is then
    mostly bright, which a ring-only test reads as "no border"."""
    for index in range(3):
        s = twins.cropped_sample(index, like, side)
        true = s.fov.astype(bool)
        assert true[0].any() and true[-1].any()  # the twin really touches top and bottom
        image = _jpeg(s.image) if like == "hrf" else s.image  # HRF ships JPEGs
        if like == "stare":
            from unetdist.data.ingest.fov import DARK

            bright = image.max(axis=2) > DARK
            assert np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]]).mean() > 0.5
        est = estimate_fov(image)
        assert est is not None, (like, side, index)
        dice, _ = agreement(est, true)
        assert dice >= 0.99, (like, side, index, dice)


def test_a_bright_label_in_one_corner_still_finds_the_disc():
    s = twins.cropped_sample(0, "stare", 200)
    image = s.image.copy()
    image[:12, -40:] = 255  # a camera's text label
    est = estimate_fov(image)
    assert est is not None and agreement(est, s.fov.astype(bool))[0] >= 0.99


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
    two_dark_corners = np.full((60, 50, 3), 128, np.uint8)
    two_dark_corners[:6, :6], two_dark_corners[-6:, -6:] = 0, 0  # not a camera's surround
    assert estimate_fov(two_dark_corners) is None


def test_shard_counts_images_left_without_a_fov_and_says_what_it_did(tmp_path):
    """A STARE twin with two cut discs and one image without any dark surround."""
    import gzip

    from PIL import Image

    from unetdist.data.ingest.writer import fov_summary, shard_dataset

    raw = twins.make_stare(tmp_path / "STARE", unlabelled=0, cropped=2)
    flat = tmp_path / "flat.ppm"
    Image.fromarray(np.full((90, 104, 3), 140, np.uint8)).save(flat, format="PPM")
    (raw / "stare-images" / "im0005.ppm.gz").write_bytes(gzip.compress(flat.read_bytes()))
    m = shard_dataset(raw, tmp_path / "s", layout="stare", progress=False, split_val=0)
    assert m["fov_sources"] == {"estimated": 19, "none": 1}
    line = fov_summary(m)
    assert line == ("FOV masks: 19 estimated from the images, 1 with neither a mask file nor "
                    "an estimate (no dark surround found): fov.png is all ones, so they are "
                    "scored over the whole image")
    assert fov_summary({"fov_sources": {"file": 22}}) is None


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
