"""Read raw dataset files (TIF, GIF, PNG, JPG, ...) into arrays with Pillow.

Pillow rather than cv2: cv2 cannot read GIF (DRIVE's labels and masks), and some DRIVE GIFs
are palette images whose raw indices are 0/1, so masks are decoded *through the palette*
(`convert("L")`), never from the raw indices.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

IMAGE_EXTS = frozenset({".png", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".bmp", ".ppm",
                        ".pgm", ".pbm", ".webp"})


class RawFileError(Exception):
    """A raw file we cannot use; the message is the reason (the caller names the file)."""


def _open(path: Path):
    """The first frame of an image file, fully decoded (so truncation shows up here)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning on big fundus images
            with Image.open(path) as im:  # closes the file only; the decoded data stays
                im.load()
                return im
    except FileNotFoundError:
        raise RawFileError("file not found") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        reason = str(e).replace(f" {str(path)!r}", "").replace(str(path), "the file")
        raise RawFileError(f"cannot read image ({type(e).__name__}: {reason})") from None


def read_image(path: str | Path) -> np.ndarray:
    """An 8-bit image as (H, W, 3) uint8 RGB (gray and palette images are expanded)."""
    im = _open(Path(path))
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        raise RawFileError(f"unsupported image mode {im.mode} (expected 8-bit gray or colour)")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def _mask_array(path: Path) -> np.ndarray:
    im = _open(path)
    if im.mode in ("P", "PA", "1"):
        return np.asarray(im.convert("L"))  # through the palette: indices 0/1 -> 0/255
    if im.mode == "LA":
        return np.asarray(im)[..., 0]
    if im.mode in ("RGB", "RGBA"):
        rgb = np.asarray(im)[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1])
                and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise RawFileError("mask is a colour image (its R, G, B channels differ)")
        return rgb[..., 0]
    return np.asarray(im)


def distinct_values(arr: np.ndarray) -> list[int]:
    if arr.dtype == np.uint8:
        return np.flatnonzero(np.bincount(arr.ravel(), minlength=256)).tolist()
    return np.unique(arr).tolist()


def read_mask(path: str | Path) -> np.ndarray:
    """A binary mask (0/1, 0/255, or a palette mapping to those) as (H, W) uint8 in {0, 1}.

    Anything else raises RawFileError listing the values found.
    """
    arr = _mask_array(Path(path))
    if arr.ndim != 2:
        raise RawFileError(f"mask has shape {arr.shape}, expected a single-channel image")
    values = distinct_values(arr)
    if set(values) <= {0, 1}:
        return arr.astype(np.uint8)
    if set(values) <= {0, 255}:
        return (arr == 255).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
    raise RawFileError(f"mask is not binary: {len(values)} distinct values ({shown}); "
                       "expected 0/1 or 0/255")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder` (hidden files and other extensions ignored), sorted."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)
