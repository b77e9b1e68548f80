"""Deterministic preprocessing shared by training, evaluation and prediction.

An RGB image becomes an *intensity* image (uint8: channel selection, optional CLAHE, fixed
gamma) plus per-channel normalisation statistics; the network input is
`(intensity - mean) / std`, applied through a 256-entry lookup table. Training crops are cut
from the same intensity image and normalised with the *whole image's* statistics, so a crop
without photometric jitter equals the matching window of `preprocess(...)`, bit for bit.

Label and FOV travel through augmentation as one packed byte per pixel (one nearest-neighbour
warp moves both): the class index in the low 7 bits (LABEL_BITS; binary {0,1}, multi-class
0..MAX_CLASS), the ignore value 255 stored there as PACKED_IGNORE, the FOV in bit FOV_SHIFT.
`pack_masks` writes it and `LABEL_LUT`/`FOV_LUT` read it back (ignore restored to 255); these
constants are the one definition of the layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from unetdist.data.codec import IGNORE
from unetdist.errors import DataError

if TYPE_CHECKING:
    from unetdist.config import DataConfig

CLAHE_CLIP = 2.0  # the usual settings for fundus images
CLAHE_TILES = (8, 8)
_LEVELS = np.arange(256, dtype=np.float64)

# the packed label|FOV byte (module docstring)
FOV_SHIFT = 7
FOV_BIT = 1 << FOV_SHIFT
LABEL_BITS = FOV_BIT - 1  # 0x7F
PACKED_IGNORE = LABEL_BITS  # the ignore value 255 in the low 7 bits
MAX_CLASS = PACKED_IGNORE - 1  # highest class index a training label may hold (126)
PACK_VERSION = 2  # part of the sample cache key: 1 was label | fov << 1
_BYTES = np.arange(256)
# label value -> low 7 bits; 0xFF marks the values that cannot be packed (127..254)
_PACK_LUT = np.where(_BYTES <= MAX_CLASS, _BYTES, 0xFF).astype(np.uint8)
_PACK_LUT[IGNORE] = PACKED_IGNORE
# packed byte -> class index (ignore back to 255) / FOV {0, 1}
LABEL_LUT = np.where((_BYTES & LABEL_BITS) == PACKED_IGNORE, IGNORE,
                     _BYTES & LABEL_BITS).astype(np.uint8)
FOV_LUT = (_BYTES >> FOV_SHIFT).astype(np.uint8)


@dataclass
class Prepared:
    """A decoded sample reduced to what training views need (what data.cache keeps)."""

    key: str
    intensity: np.ndarray  # (H, W) or (H, W, 4) uint8 after channels/CLAHE/gamma (RGB + pad)
    masks: np.ndarray  # (H, W) uint8: pack_masks(label, fov) (one nearest-neighbour warp)
    mean: np.ndarray  # (C,) float64 normalisation offset
    std: np.ndarray  # (C,) float64 normalisation scale
    level: np.ndarray  # (C,) float64 mean intensity in [0, 1] inside the FOV (contrast pivot)
    # class -> flat pixel indices, made on first use by data.crop_class_bias (augment.py)
    points: dict[int, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        extra = sum(p.nbytes for p in self.points.values()) if self.points else 0
        return self.intensity.nbytes + self.masks.nbytes + extra


def intensity(rgb: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """RGB (H,W,3) uint8 -> uint8 (H,W) for green/gray or (H,W,3) for rgb."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    if cfg.channels == "green":
        x = np.ascontiguousarray(rgb[:, :, 1])
    elif cfg.channels == "gray":
        x = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    else:
        x = np.ascontiguousarray(rgb)
    if cfg.clahe:
        clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=CLAHE_TILES)
        x = clahe.apply(x) if x.ndim == 2 else np.dstack([clahe.apply(x[:, :, c])
                                                          for c in range(3)])
    if cfg.gamma != 1.0:
        # Classic retina preprocessing convention: out = (in/255)^(1/gamma), gamma > 1 brightens.
        table = np.clip(255.0 * (_LEVELS / 255.0) ** (1.0 / cfg.gamma) + 0.5, 0, 255)
        x = cv2.LUT(x, table.astype(np.uint8))
    return x


def _channel_pixels(x: np.ndarray, fov: np.ndarray | None) -> np.ndarray:
    """(N, C) float64 pixels used for statistics: inside the FOV when it has any pixels."""
    flat = x.reshape(-1, 1 if x.ndim == 2 else x.shape[2]).astype(np.float64)
    if fov is not None:
        inside = fov.reshape(-1) > 0
        if inside.any():
            return flat[inside]
    return flat


def norm_stats(x: np.ndarray, fov: np.ndarray | None, mode: str) -> tuple[np.ndarray, ...]:
    """(mean, std, level) per channel for `(x - mean) / std` under data.normalize=MODE."""
    pix = _channel_pixels(x, fov)
    level = pix.mean(axis=0) / 255.0
    channels = pix.shape[1]
    if mode == "zscore":
        mean, std = pix.mean(axis=0), pix.std(axis=0)
        std = np.where(std < 1e-3, 1.0, std)  # a flat image must not divide by ~0
    elif mode == "unit":
        mean, std = np.zeros(channels), np.full(channels, 255.0)
    elif mode == "none":
        mean, std = np.zeros(channels), np.ones(channels)
    else:
        raise ValueError(f"unknown normalize mode {mode!r}")
    return mean, std, level


def norm_lut(mean: np.ndarray, std: np.ndarray, values01: np.ndarray | None = None) -> np.ndarray:
    """(256, C) float32 table: uint8 level -> normalised value (optionally after jitter).

    VALUES01, when given, is the (256, C) intensity in [0, 1] after photometric jitter.
    """
    v = (_LEVELS[:, None] / 255.0) if values01 is None else values01
    return ((v * 255.0 - mean[None, :]) / std[None, :]).astype(np.float32)


def apply_lut(x: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """uint8 (H,W[,C']) -> float32 (H,W[,C']) through a (256, C) table (C <= C' channels)."""
    if x.ndim == 2:
        return cv2.LUT(x, lut[:, 0])
    table = np.zeros((256, 1, x.shape[2]), np.float32)
    table[:, 0, : lut.shape[1]] = lut
    return cv2.LUT(x, table)


def to_chw(x: np.ndarray, channels: int) -> np.ndarray:
    """(H,W) or (H,W,C') -> contiguous (C,H,W), keeping the first CHANNELS channels."""
    if x.ndim == 2:
        return x[None]
    return np.ascontiguousarray(x[:, :, :channels].transpose(2, 0, 1))


def preprocess(rgb: np.ndarray, fov: np.ndarray | None, cfg: DataConfig) -> np.ndarray:
    """The network input for one image: float32 (C, H, W). Same for train, eval and predict.

    FOV (H, W) restricts the z-score statistics to the field of view; None uses the whole image.
    """
    x = intensity(rgb, cfg)
    mean, std, _ = norm_stats(x, fov, cfg.normalize)
    return to_chw(apply_lut(x, norm_lut(mean, std)), cfg.in_channels)


def pack_masks(label: np.ndarray, fov: np.ndarray, key: str = "?") -> np.ndarray:
    """(H, W) uint8 packed byte of a class-index LABEL (0..MAX_CLASS, 255 = ignore) and a FOV.

    DataError naming the sample for a class index the byte cannot hold (127..254).
    """
    low = cv2.LUT(np.ascontiguousarray(label, dtype=np.uint8), _PACK_LUT)
    if int(low.max(initial=0)) == 0xFF:
        bad = sorted(set(np.unique(label).tolist()) - set(range(MAX_CLASS + 1)) - {IGNORE})
        raise DataError(f"sample {key!r}: label values {bad[:5]} are neither a class index "
                        f"0..{MAX_CLASS} nor the ignore value {IGNORE}")
    return low | ((fov > 0).astype(np.uint8) << FOV_SHIFT)


def unpack_masks(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label: class indices with ignore as 255, fov {0,1}), both uint8 (H, W)."""
    return cv2.LUT(masks, LABEL_LUT), cv2.LUT(masks, FOV_LUT)


def _resized_mask(m: np.ndarray, size: tuple[int, int], interp: int) -> np.ndarray:
    """A {0,1} mask smoothly resized and thresholded; any other class map nearest-neighbour
    (class indices must never blend, and the ignore value is not a level between classes)."""
    if int(m.max(initial=0)) > 1:
        return cv2.resize(m, size, interpolation=cv2.INTER_NEAREST)
    soft = cv2.resize(m.astype(np.float32), size, interpolation=interp)
    return (soft >= 0.5).astype(np.uint8)


def rescaled(decoded: dict, factor: float) -> dict:
    """The sample resized by data.scale (area-averaged when shrinking); binary masks stay
    binary and class-index maps are resized nearest-neighbour.

    Evaluation applies the same factor through eval.scale (see config.run), on the tensor.
    """
    if factor == 1.0:
        return decoded
    h, w = decoded["image"].shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    out = dict(decoded, image=cv2.resize(decoded["image"], size, interpolation=interp))
    for m in ("label", "fov"):
        out[m] = _resized_mask(decoded[m], size, interp)
    return out


def prepare(decoded: dict, cfg: DataConfig) -> Prepared:
    """A decoded sample (codec.decode_sample) -> the compact form training views start from."""
    decoded = rescaled(decoded, cfg.scale)
    x = intensity(decoded["image"], cfg)
    mean, std, level = norm_stats(x, decoded["fov"], cfg.normalize)
    if x.ndim == 3:  # OpenCV warps 4-channel uint8 images several times faster than 3-channel
        x = np.dstack([x, np.zeros(x.shape[:2], np.uint8)])
    masks = pack_masks(decoded["label"], decoded["fov"], decoded["key"])
    return Prepared(key=decoded["key"], intensity=x, masks=masks, mean=mean, std=std, level=level)
