"""Preprocessing against independent formulas; augmented views stay binary and aligned."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from unetdist.config import AugConfig, DataConfig
from unetdist.data.augment import train_view, view_matrix
from unetdist.data.preprocess import prepare, preprocess

H, W = 96, 112


def _sample(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), (0, 0), 2)
    yy, xx = np.mgrid[:H, :W]
    fov = (((yy - H / 2) / (H / 2)) ** 2 + ((xx - W / 2) / (W / 2)) ** 2 < 1).astype(np.uint8)
    label = (rng.random((H, W)) < 0.3).astype(np.uint8)
    return {"key": "k", "image": img, "label": label, "fov": fov}


def _no_photometric(**geometry) -> AugConfig:
    return AugConfig(brightness=0, contrast=0, gamma=0, blur=0, noise=0, **geometry)


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("channels,n", [("rgb", 3), ("green", 1), ("gray", 1)])
def test_preprocess_channels_and_zscore_inside_fov(channels, n):
    s = _sample()
    x = preprocess(s["image"], s["fov"], DataConfig(channels=channels, normalize="zscore"))
    assert x.dtype == np.float32 and x.shape == (n, H, W)
    inside = x[:, s["fov"] > 0].astype(np.float64)
    np.testing.assert_allclose(inside.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(inside.std(axis=1), 1, atol=1e-4)
    ref = {"rgb": s["image"], "green": s["image"][:, :, 1],
           "gray": cv2.cvtColor(s["image"], cv2.COLOR_RGB2GRAY)}[channels].astype(np.float64)
    ref = ref.reshape(H, W, -1).transpose(2, 0, 1)
    inside_ref = ref[:, s["fov"] > 0]
    want = (ref - inside_ref.mean(axis=1)[:, None, None]) / inside_ref.std(axis=1)[:, None, None]
    np.testing.assert_allclose(x, want, atol=1e-5)


def test_preprocess_unit_none_gamma_clahe_against_formulas():
    s = _sample()
    g = s["image"][:, :, 1]
    x = preprocess(s["image"], None, DataConfig(normalize="unit"))
    np.testing.assert_allclose(x[0], g / 255.0, atol=1e-7)
    x = preprocess(s["image"], None, DataConfig(normalize="none"))
    np.testing.assert_array_equal(x[0], g.astype(np.float32))
    x = preprocess(s["image"], None, DataConfig(normalize="none", gamma=1.5))
    want = np.floor(255.0 * (g / 255.0) ** (1 / 1.5) + 0.5)
    np.testing.assert_array_equal(x[0], want.astype(np.float32))
    x = preprocess(s["image"], None, DataConfig(normalize="none", clahe=True))
    want = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(np.ascontiguousarray(g))
    np.testing.assert_array_equal(x[0], want.astype(np.float32))


def test_flat_image_does_not_divide_by_zero():
    img = np.full((8, 8, 3), 7, np.uint8)
    x = preprocess(img, None, DataConfig())
    assert np.isfinite(x).all() and np.all(x == 0)


# ----------------------------------------------------------------------------- training views


@pytest.mark.parametrize("channels", ["rgb", "green"])
def test_view_without_augmentation_is_a_window_of_preprocess(channels):
    cfg = DataConfig(channels=channels, crop=40, aug=AugConfig(enabled=False))
    s = _sample(1)
    prep, full = prepare(s, cfg), preprocess(s["image"], s["fov"], cfg)
    for seed in range(5):
        m, _ = view_matrix(prep, cfg, np.random.default_rng(seed))
        x0, y0 = int(m[0, 2]), int(m[1, 2])
        img, label, fov = train_view(prep, cfg, np.random.default_rng(seed))
        assert np.array_equal(img, full[:, y0:y0 + 40, x0:x0 + 40])  # bit for bit
        assert np.array_equal(label, s["label"][y0:y0 + 40, x0:x0 + 40])
        assert np.array_equal(fov, s["fov"][y0:y0 + 40, x0:x0 + 40])


def _coordinate_sample(size: int = 128) -> dict:
    """R = x, G = y: each output pixel says where it came from. Label: 8 px checkerboard."""
    yy, xx = np.mgrid[:size, :size]
    img = np.dstack([xx, yy, np.zeros_like(xx)]).astype(np.uint8)
    label = (((xx // 8) + (yy // 8)) % 2).astype(np.uint8)
    return {"key": "coords", "image": img, "label": label, "fov": np.ones_like(label)}


def _exact_source(m: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    return m[0, 0] * u + m[0, 1] * v + m[0, 2], m[1, 0] * u + m[1, 1] * v + m[1, 2]


@pytest.mark.parametrize("mode", ["crop", "crop_elastic", "resize", "full"])
def test_augmented_labels_stay_binary_and_aligned(mode):
    geometry = {"hflip": 0.5, "vflip": 0.5, "rot90": True, "rotate_deg": 30.0, "scale": 0.2,
                    "elastic": 1.0 if mode == "crop_elastic" else 0.0}
    cfg = DataConfig(channels="rgb", normalize="none", crop=0 if mode == "full" else 48,
                     resize=64 if mode == "resize" else 0, aug=_no_photometric(**geometry))
    prep = prepare(_coordinate_sample(), cfg)
    checked, turned = 0, 0
    for seed in range(12):
        img, label, fov = train_view(prep, cfg, np.random.default_rng(seed))
        assert label.dtype == fov.dtype == np.uint8
        assert set(np.unique(label)) <= {0, 1} and set(np.unique(fov)) <= {0, 1}
        xs, ys = np.rint(img[0]).astype(int), np.rint(img[1]).astype(int)
        # >= 2 px away from the image border (where black is blended in) and a checker edge
        core = cv2.erode(fov, np.ones((5, 5), np.uint8), borderValue=0) > 0
        safe = core & (xs % 8 >= 2) & (xs % 8 <= 5) & (ys % 8 >= 2) & (ys % 8 <= 5)
        want = ((xs // 8) + (ys // 8)) % 2
        assert np.array_equal(label[safe], want[safe]), seed
        checked += int(safe.sum())
        turned += int(not np.array_equal(xs[0, :4], xs[0, 0] + np.arange(4)))
        if mode != "crop_elastic":  # the view is exactly the affine map view_matrix describes
            m, _ = view_matrix(prep, cfg, np.random.default_rng(seed))
            sx, sy = _exact_source(m, label.shape)
            assert np.abs(sx - img[0])[core].max() <= 1 and np.abs(sy - img[1])[core].max() <= 1
            inside = (sx > 0.5) & (sx < 126.5) & (sy > 0.5) & (sy < 126.5)
            outside = (sx < -1) | (sx > 128) | (sy < -1) | (sy > 128)
            assert fov[inside].all() and not fov[outside].any()
    assert checked > 2000 and turned >= 3  # the geometry really varied


def test_photometric_jitter_changes_image_not_masks():
    s = _sample(2)
    plain = DataConfig(crop=32, aug=_no_photometric())
    jitter = DataConfig(crop=32, aug=AugConfig(brightness=0.2, contrast=0.2, gamma=0.2, blur=1.0,
                                               noise=0.05))
    a = train_view(prepare(s, plain), plain, np.random.default_rng(3))
    b = train_view(prepare(s, jitter), jitter, np.random.default_rng(3))
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])  # same geometry draws
    assert not np.allclose(a[0], b[0]) and np.isfinite(b[0]).all()


def test_views_are_a_function_of_the_rng_seed():
    cfg = DataConfig(crop=32, aug=AugConfig(elastic=0.5))
    prep = prepare(_sample(3), cfg)
    a = train_view(prep, cfg, np.random.default_rng(11))
    b = train_view(prep, cfg, np.random.default_rng(11))
    c = train_view(prep, cfg, np.random.default_rng(12))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_crops_are_centred_in_the_fov_when_asked():
    s = _sample(4)
    s["fov"] = np.zeros((H, W), np.uint8)
    s["fov"][70:80, 90:100] = 1  # a small FOV in a corner
    inside = DataConfig(crop=24, crop_in_fov=1.0, aug=AugConfig(enabled=False))
    anywhere = DataConfig(crop=24, crop_in_fov=0.0, aug=AugConfig(enabled=False))
    hits = [train_view(prepare(s, c), c, np.random.default_rng(i))[2].any()
            for c in (inside, anywhere) for i in range(40)]
    assert all(hits[:40]) and not all(hits[40:])


def test_crop_larger_than_image_is_padded_outside_the_fov():
    cfg = DataConfig(crop=160, aug=AugConfig(enabled=False))
    img, label, fov = train_view(prepare(_sample(5), cfg), cfg, np.random.default_rng(0))
    assert img.shape == (1, 160, 160) and fov.sum() == _sample(5)["fov"].sum()
    assert fov[:, :10].sum() == 0 and label[:10].sum() == 0
