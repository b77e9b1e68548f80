"""Read raw dataset files (TIF, GIF, PNG, JPG, PPM, gzipped PPM, ...) into arrays with Pillow.

Pillow rather than cv2: cv2 cannot read GIF (DRIVE's labels and masks), and some DRIVE GIFs
are palette images whose raw indices are 0/1, so masks are decoded *through the palette*
(`convert("L")`), never from the raw indices. STARE ships `.ppm.gz` files (its labels are P5
gray images despite the `.ppm` name); Pillow goes by the file's magic bytes, not its name.

The mask rule: a mask with exactly two gray levels, one <= 127 and one >= 128, is binary (the
bright level is the foreground). That covers 0/1, 0/255, mode "1" PNGs, RGB masks with equal
channels and DRIVE's second-observer GIFs, whose palette maps indices 0/1 to (4, 2, 4) and
(252, 254, 252), i.e. gray 3 and 253. More levels need an explicit `--binarize T`.

Class masks (a dataset with a class table, `read_class_mask`) are read as stored instead: a
colour image as RGB (its colours are snapped to the table's), a one-channel image as its raw
values, palette images by their indices, not through the palette (the indices are the classes).
"""

from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path

import numpy as np

IMAGE_EXTS = frozenset({".png", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".bmp", ".ppm",
                        ".pgm", ".pbm", ".webp"})


def image_stem(path: Path) -> str:
    """The file name without its image extension (and without `.gz`): im0001.ppm.gz -> im0001."""
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    return Path(name).stem


def is_image_name(path: Path) -> bool:
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    return not path.name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTS


class RawFileError(Exception):
    """A raw file we cannot use; the message is the reason (the caller names the file)."""


def _source(path: Path):
    """What Image.open reads: the path, or the decompressed bytes of a `.gz` file."""
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return io.BytesIO(f.read())
    return path


def _open(path: Path, load: bool = True):
    """The first frame of an image file, fully decoded (so truncation shows up here); with
    load=False only the header is read (size checks before an expensive decode)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning on big fundus images
            with Image.open(_source(path)) as im:  # closes the file only; decoded data stays
                if load:
                    im.load()
                return im
    except FileNotFoundError:
        raise RawFileError("file not found") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
            gzip.BadGzipFile) as e:
        reason = str(e).replace(f" {str(path)!r}", "").replace(str(path), "the file")
        raise RawFileError(f"cannot read image ({type(e).__name__}: {reason})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    return _open(Path(path), load=False).size


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


_RAW_MODES = frozenset({"L", "P", "1", "I", "I;16", "I;16B", "I;16L"})  # one channel, as stored


def _palette_is(im, colours: frozenset) -> bool:
    """Whether every palette entry P-mode image `im` uses is one of `colours` (RGB tuples)."""
    if not colours or im.mode != "P":
        return False
    pal = np.asarray(im.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
    used = distinct_values(np.asarray(im))
    return max(used) < len(pal) and all(tuple(pal[i].tolist()) in colours for i in used)


def read_class_mask(path: str | Path, colours: frozenset = frozenset()) -> np.ndarray:
    """A class mask as stored: (H, W, 3) uint8 RGB for a colour image (alpha dropped), or the
    (H, W) raw values (palette indices, gray levels, 16-bit ints) of a one-channel image.

    A palette image whose used entries are all in `colours` (the class table's) is a colour
    mask saved with a palette, and is read as RGB: the table says what the colours mean.
    """
    im = _open(Path(path))
    if im.mode in _RAW_MODES and not _palette_is(im, colours):
        return np.asarray(im)
    if im.mode in ("LA", "PA"):  # the alpha band says nothing about the class
        return np.asarray(im.getchannel(0))
    if im.mode == "F":
        raise RawFileError("mask holds floating-point values (expected class indices or colours)")
    if im.mode != "RGB":  # RGBA, CMYK, YCbCr, a palette of class colours, ...
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def distinct_values(arr: np.ndarray) -> list[int]:
    if arr.dtype == np.uint8:
        return np.flatnonzero(np.bincount(arr.ravel(), minlength=256)).tolist()
    return np.unique(arr).tolist()


def to_binary(arr: np.ndarray, binarize: float | None = None) -> np.ndarray:
    """(H, W) gray levels -> uint8 {0, 1} by the mask rule (module docstring), or `> binarize`.

    Anything else raises RawFileError listing the values found.
    """
    if binarize is not None:
        return (arr > binarize).astype(np.uint8)
    values = distinct_values(arr)
    if set(values) <= {0, 1}:
        return arr.astype(np.uint8)
    if set(values) <= {0, 255}:
        return (arr == 255).astype(np.uint8)
    if len(values) == 2 and values[0] <= 127 < values[1]:
        return (arr == values[1]).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
    raise RawFileError(f"mask is not binary: {len(values)} distinct values ({shown}); expected "
                       "two levels, one <= 127 and one >= 128 (use --binarize T to threshold "
                       "at T)")


def read_mask(path: str | Path, binarize: float | None = None) -> np.ndarray:
    """A binary mask (see the mask rule above) as (H, W) uint8 in {0, 1}."""
    arr = _mask_array(Path(path))
    if arr.ndim != 2:
        raise RawFileError(f"mask has shape {arr.shape}, expected a single-channel image")
    return to_binary(arr, binarize)


def list_images(folder: Path, broken: list[Path] | None = None) -> list[Path]:
    """Image files directly in `folder` (hidden files and other extensions ignored), sorted.

    Symlinks that do not resolve to a file (dangling, or a loop) are skipped and, when `broken`
    is given, appended to it so that the caller can warn once about all of them.
    """
    out = []
    for p in folder.iterdir():
        if not is_image_name(p):
            continue
        try:
            if p.is_file():
                out.append(p)
            elif p.is_symlink() and broken is not None:
                broken.append(p)
        except OSError:  # a symlink loop on Pythons whose is_file() does not swallow ELOOP
            if broken is not None:
                broken.append(p)
    return sorted(out)
