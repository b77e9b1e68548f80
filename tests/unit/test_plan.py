"""`unetdist plan`/`inspect` building blocks: the calibre measure, data.scale, outliers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from unetdist.config import config_from_dict
from unetdist.data.preprocess import rescaled
from unetdist.errors import ConfigError, UserError
from unetdist.plan.fingerprint import ImageStats, vessel_calibre
from unetdist.plan.inspect_page import outliers
from unetdist.plan.make import check_options
from unetdist.plan.planner import REF_CALIBRE, Plan, decide_scale, differences


def _bars(width: int, size: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Three horizontal vessels WIDTH px wide and a slanted one, inside a full FOV."""
    label = np.zeros((size, size), np.uint8)
    for y in (40, 100, 160):
        label[y:y + width, 20:180] = 1
    cv2.line(label, (20, 20), (180, 190), 1, width)
    return label, np.ones_like(label)


@pytest.mark.parametrize("width", [2, 3, 6, 11])
def test_calibre_measures_the_drawn_width(width):
    label, fov = _bars(width)
    assert vessel_calibre(label, fov) == pytest.approx(width, rel=0.15)


def test_calibre_scales_with_the_drawing_and_ignores_outside_the_fov():
    label, fov = _bars(3)
    big = cv2.resize(label, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
    ratio = vessel_calibre(big, np.ones_like(big)) / vessel_calibre(label, fov)
    assert ratio == pytest.approx(4, rel=0.05)
    wide = label.copy()
    wide[0:30, :] = 1  # a 30 px band the FOV excludes must not count
    fov_cut = fov.copy()
    fov_cut[0:35, :] = 0
    assert vessel_calibre(wide, fov_cut) == pytest.approx(vessel_calibre(label, fov), rel=0.1)
    assert vessel_calibre(np.zeros_like(label), fov) is None


class _FP:
    def __init__(self, calibre: float) -> None:
        self.calibre = calibre


@pytest.mark.parametrize("calibre, expected", [(REF_CALIBRE, 1.0), (REF_CALIBRE * 1.1, 1.0),
                                               (REF_CALIBRE * 2, 0.5), (REF_CALIBRE / 2, 2.0),
                                               (0.01, 4.0)])
def test_planned_scale_brings_the_calibre_to_the_recipes(calibre, expected):
    plan = Plan("r", {}, [])
    assert decide_scale(plan, _FP(calibre)) == pytest.approx(expected)
    assert plan.config["data"]["scale"] == pytest.approx(expected)
    assert plan.decisions[0].key == "data.scale" and "calibre" in plan.decisions[0].reason


def test_differences_name_changed_and_new_fields():
    assert differences({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3, "d": 4}}) == [
        "a.c: 2 -> 3", "a.d: (unset: default) -> 4"]


def test_data_scale_is_validated_and_becomes_the_eval_scale():
    assert config_from_dict({"data": {"scale": 0.5}}).eval.scale == 0.5
    kept = config_from_dict({"data": {"scale": 0.5}, "eval": {"scale": 0.7}})
    assert kept.eval.scale == 0.7
    assert config_from_dict({}).eval.scale == 1.0
    for bad in (0.05, 0.0, 4.5):
        with pytest.raises(ConfigError, match="data.scale"):
            config_from_dict({"data": {"scale": bad}})
    with pytest.raises(ConfigError, match="data.scale"):
        config_from_dict({"data": {"scale": 0.5, "resize": 64}})


def test_rescaled_sample_keeps_binary_masks_and_the_vessel_share():
    label, fov = _bars(4, size=120)
    rgb = np.dstack([label * 200] * 3).astype(np.uint8)
    d = {"key": "k", "image": rgb, "label": label, "fov": fov}
    half = rescaled(d, 0.5)
    assert half["image"].shape == (60, 60, 3) and half["label"].shape == (60, 60)
    assert set(np.unique(half["label"])) <= {0, 1} and half["fov"].all()
    assert half["label"].mean() == pytest.approx(label.mean(), rel=0.1)
    assert rescaled(d, 1.0) is d


def _stats(key: str, brightness: float, size: int = 100, frac: float = 0.1) -> ImageStats:
    return ImageStats(key, "train", size, size, 90.0, frac, brightness, (0, 0, 0), (1, 1, 1),
                      (0, 0, 0), size * size)


def test_outliers_are_beyond_the_robust_spread():
    stats = [_stats(f"i{i}", 100 + i) for i in range(9)]
    stats.append(_stats("dark", 20))
    stats.append(_stats("huge", 104, size=400))
    found = {(o.key, o.what) for o in outliers(stats)}
    assert found == {("dark", "brightness"), ("huge", "size (px)")}


@pytest.mark.parametrize("args, flag", [(("tpu", 1, None, "vessels"), "--device"),
                                        (("cpu", 0, None, "vessels"), "--gpus"),
                                        (("cpu", 1, -1.0, "vessels"), "--minutes"),
                                        (("cpu", 1, None, "av"), "--task")])
def test_plan_options_are_checked_before_any_work(args, flag):
    with pytest.raises(UserError, match=flag):
        check_options(*args)
    check_options("cuda", 8, 30.0, "vessels")
