"""Training views: a crop (or the seed's resize-to-N) plus paired, label-preserving augmentation.

Speed comes from doing all geometry in one resampling: crop position, flips, 90-degree turns,
small rotation and zoom (and resize-to-N) are composed into one 2x3 matrix, and the image is
warped once (bilinear) while label and FOV, packed into one byte (preprocess.pack_masks), are
warped once with nearest neighbour, so class indices never blend and stay aligned. An optional
elastic distortion turns the same matrix into a `remap` grid. Photometric jitter (gamma,
contrast, brightness) and the normalisation are one 256-entry lookup table on the uint8 crop;
then optional blur and noise.

Every random number comes from the `rng` argument, so a view is a pure function of
(sample, config, rng seed).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

from unetdist.data.preprocess import (
    FOV_BIT,
    LABEL_BITS,
    PACKED_IGNORE,
    Prepared,
    apply_lut,
    norm_lut,
    to_chw,
    unpack_masks,
)

if TYPE_CHECKING:
    from unetdist.config import AugConfig, DataConfig

_LEVELS01 = np.arange(256, dtype=np.float64) / 255.0
_ROT90 = [np.array(m, dtype=np.float64) for m in
          ([[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]])]
FOV_TRIES = 64  # rejection-sampling attempts for a crop centre inside the FOV
ELASTIC_GRID = 5  # control points per side of the coarse random displacement field
ELASTIC_ALPHA = 0.03  # displacement std as a fraction of the view size
CLASS_POINTS = 4096  # most candidate centres kept per class (evenly strided) for crop_class_bias


def view_size(prep: Prepared, cfg: DataConfig) -> tuple[int, int]:
    """(h, w) of the training view: resize N, else the crop, else the full image."""
    if cfg.resize:
        return cfg.resize, cfg.resize
    if cfg.crop:
        return cfg.crop, cfg.crop
    return prep.intensity.shape[:2]


def _top_left(extent: int, size: int, point: int | None, rng: np.random.Generator) -> int:
    """First source index of a SIZE window along an axis of EXTENT, containing POINT if given."""
    if extent < size:
        return (extent - size) // 2  # window larger than the image: centre it, pad both sides
    if point is None:
        return int(rng.integers(0, extent - size + 1))
    return int(np.clip(point - size // 2, 0, extent - size))


def _fov_point(masks: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """A uniformly random FOV pixel (y, x), or None when the FOV is empty."""
    H, W = masks.shape
    for _ in range(FOV_TRIES):  # a fundus FOV covers most of the image: ~1-2 tries
        y, x = int(rng.integers(0, H)), int(rng.integers(0, W))
        if masks[y, x] & FOV_BIT:
            return y, x
    inside = np.flatnonzero(masks.reshape(-1) & FOV_BIT)  # small FOV: exact, slower
    if inside.size == 0:
        return None
    return divmod(int(inside[rng.integers(0, inside.size)]), W)


def class_points(prep: Prepared) -> dict[int, np.ndarray]:
    """Non-background, non-ignore class -> flat indices of (up to CLASS_POINTS of) its pixels.

    Made once per sample on first use (kept on PREP); an even stride keeps a thin class's
    candidates spread along it.
    """
    if prep.points is None:
        label = (prep.masks & LABEL_BITS).reshape(-1)
        counts = np.bincount(label, minlength=LABEL_BITS + 1)
        prep.points = {}
        for c in np.flatnonzero(counts[1:PACKED_IGNORE]) + 1:
            idx = np.flatnonzero(label == c)
            stride = -(-idx.size // CLASS_POINTS)  # ceil
            prep.points[int(c)] = idx[::stride].astype(np.int32)
    return prep.points


def _class_point(prep: Prepared, rng: np.random.Generator) -> tuple[int, int] | None:
    """A pixel (y, x) of a class drawn uniformly among the foreground classes present (nnU-Net's
    foreground oversampling: a rare class is drawn as often as a common one), or None."""
    points = class_points(prep)
    if not points:
        return None
    idx = points[sorted(points)[int(rng.integers(0, len(points)))]]
    return divmod(int(idx[rng.integers(0, idx.size)]), prep.masks.shape[1])


def _crop_centre(prep: Prepared, cfg: DataConfig, size: tuple[int, int],
                 rng: np.random.Generator) -> tuple[float, float]:
    """Source (x, y) of the view centre: with prob crop_class_bias centred on a foreground
    class's pixel, else with prob crop_in_fov the window holds a FOV pixel."""
    H, W = prep.intensity.shape[:2]
    h, w = size
    point = None
    if cfg.crop_class_bias > 0 and rng.random() < cfg.crop_class_bias:  # 0: no draw at all
        point = _class_point(prep, rng)
    if point is None and rng.random() < cfg.crop_in_fov:
        point = _fov_point(prep.masks, rng)
    y0 = _top_left(H, h, None if point is None else point[0], rng)
    x0 = _top_left(W, w, None if point is None else point[1], rng)
    return x0 + (w - 1) / 2.0, y0 + (h - 1) / 2.0


def _linear_part(aug: AugConfig, rng: np.random.Generator) -> np.ndarray:
    """2x2 output->source map of the random flips, 90-degree turns, rotation and zoom."""
    a = np.eye(2)
    if not aug.enabled:
        return a
    fx = -1.0 if rng.random() < aug.hflip else 1.0
    fy = -1.0 if rng.random() < aug.vflip else 1.0
    a = a @ np.diag([fx, fy])
    if aug.rot90:
        a = _ROT90[int(rng.integers(0, 4))] @ a  # exact integers: a pure turn is lossless
    if aug.rotate_deg > 0:
        t = math.radians(rng.uniform(-aug.rotate_deg, aug.rotate_deg))
        a = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) @ a
    if aug.scale > 0:
        a = a / rng.uniform(1.0 - aug.scale, 1.0 + aug.scale)  # zoom > 1 samples a smaller area
    return a


def view_matrix(prep: Prepared, cfg: DataConfig,
                rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """(2x3 matrix mapping view pixels to source pixels, view size (h, w))."""
    H, W = prep.intensity.shape[:2]
    h, w = view_size(prep, cfg)
    if cfg.resize:
        centre, s = ((W - 1) / 2.0, (H - 1) / 2.0), np.diag([W / w, H / h])
    else:
        centre, s = _crop_centre(prep, cfg, (h, w), rng), np.eye(2)
    a = s @ _linear_part(cfg.aug, rng)
    offset = np.asarray(centre) - a @ np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    return np.hstack([a, offset[:, None]]), (h, w)


def _elastic_maps(m: np.ndarray, size: tuple[int, int],
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """remap grids for the affine M after a smooth random displacement of the view grid."""
    h, w = size
    alpha = ELASTIC_ALPHA * min(h, w)
    coarse = rng.standard_normal((2, ELASTIC_GRID, ELASTIC_GRID)).astype(np.float32) * alpha
    dx = cv2.resize(coarse[0], (w, h), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(coarse[1], (w, h), interpolation=cv2.INTER_CUBIC)
    u = np.arange(w, dtype=np.float32)[None, :] + dx
    v = np.arange(h, dtype=np.float32)[:, None] + dy
    m32 = m.astype(np.float32)
    map_x = m32[0, 0] * u + m32[0, 1] * v + m32[0, 2]
    map_y = m32[1, 0] * u + m32[1, 1] * v + m32[1, 2]
    return map_x, map_y


def warp(prep: Prepared, m: np.ndarray, size: tuple[int, int],
         maps: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 intensity view, uint8 packed label/FOV view); outside the image all is 0.

    A constant black border matches what lies outside a fundus image's FOV anyway, and it is
    OpenCV's fast path (reflecting borders make 4-channel warps ~4x slower).
    """
    h, w = size
    border = {"borderMode": cv2.BORDER_CONSTANT, "borderValue": 0}
    if maps is None:
        inv = cv2.WARP_INVERSE_MAP
        img = cv2.warpAffine(prep.intensity, m, (w, h), flags=cv2.INTER_LINEAR | inv, **border)
        masks = cv2.warpAffine(prep.masks, m, (w, h), flags=cv2.INTER_NEAREST | inv, **border)
    else:
        img = cv2.remap(prep.intensity, maps[0], maps[1], cv2.INTER_LINEAR, **border)
        masks = cv2.remap(prep.masks, maps[0], maps[1], cv2.INTER_NEAREST, **border)
    return img, masks


def jitter_lut(prep: Prepared, aug: AugConfig, rng: np.random.Generator) -> np.ndarray:
    """(256, C) table: uint8 level -> normalised value after random gamma/contrast/brightness."""
    if not aug.enabled:
        return norm_lut(prep.mean, prep.std)
    g = rng.uniform(1.0 - aug.gamma, 1.0 + aug.gamma) if aug.gamma > 0 else 1.0
    c = rng.uniform(1.0 - aug.contrast, 1.0 + aug.contrast) if aug.contrast > 0 else 1.0
    b = rng.uniform(-aug.brightness, aug.brightness) if aug.brightness > 0 else 0.0
    pivot = prep.level[None, :]  # contrast around the FOV's mean level keeps its brightness
    v = (_LEVELS01[:, None] ** g - pivot) * c + pivot + b
    return norm_lut(prep.mean, prep.std, np.clip(v, 0.0, 1.0))


def _blur_and_noise(x: np.ndarray, prep: Prepared, aug: AugConfig,
                    rng: np.random.Generator) -> None:
    """In place on a (C, h, w) float32 array, one plane at a time (OpenCV's fast 2-D paths)."""
    sigma_blur = rng.uniform(0.3, 1.0) if rng.random() < aug.blur else 0.0
    sigma_noise = rng.uniform(0.0, aug.noise) * 255.0 / prep.std if aug.noise > 0 else None
    if sigma_noise is not None:
        cv2.setRNGSeed(int(rng.integers(0, 2**31 - 1)))  # cv2.randn: ~5x numpy's speed
        noise = np.empty(x.shape[1:], np.float32)
    for c in range(x.shape[0]):
        if sigma_blur:
            cv2.GaussianBlur(x[c], (0, 0), sigma_blur, dst=x[c])
        if sigma_noise is not None:
            cv2.randn(noise, 0.0, 1.0)
            cv2.scaleAdd(noise, float(sigma_noise[c]), x[c], dst=x[c])


def render_view(prep: Prepared, cfg: DataConfig, rng: np.random.Generator,
                out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (C,h,w), packed uint8 label/FOV (h,w)) of one augmented view.

    OUT, a C-contiguous float32 (C,h,w) array (e.g. a slot of a batch), receives the image
    without an intermediate copy.
    """
    m, size = view_matrix(prep, cfg, rng)
    elastic = cfg.aug.enabled and cfg.aug.elastic > 0 and rng.random() < cfg.aug.elastic
    img, masks = warp(prep, m, size, _elastic_maps(m, size, rng) if elastic else None)
    lut = jitter_lut(prep, cfg.aug, rng)
    if out is None:
        out = np.empty((cfg.in_channels, *size), np.float32)
    if img.ndim == 2:
        cv2.LUT(img, lut[:, 0], dst=out[0])
    else:
        np.copyto(out, to_chw(apply_lut(img, lut), cfg.in_channels))
    if cfg.aug.enabled:
        _blur_and_noise(out, prep, cfg.aug, rng)
    return out, masks


def train_view(prep: Prepared, cfg: DataConfig,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented training view: (image float32 (C,h,w), label uint8 (h,w) class indices with
    ignore 255, fov uint8 (h,w) {0,1})."""
    x, masks = render_view(prep, cfg, rng)
    return (x, *unpack_masks(masks))
