"""Any image file a user points `predict` or the Python API at, read from its bytes.

PNG/JPEG/TIFF/BMP/GIF/PPM/WebP, any size, RGB or gray (16-bit images are scaled to 8 bits).
Files are read as bytes and decoded from memory: OpenCV never gets a path (it crashes on names
that are not UTF-8). cv2 decodes first (16-bit, TIFF); Pillow what cv2 cannot (GIF).
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from unetdist.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".webp")


@contextmanager
def _quiet_decoders():
    """Bad files are reported once by name; silence the decoders' own log lines about them."""
    import cv2

    log = cv2.utils.logging
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLogLevel(level)


def _read(path: Path, color: bool) -> np.ndarray:
    """cv2 first (handles 16-bit and TIFF), Pillow for what cv2 cannot read (GIF); both decode
    bytes read here, never a path."""
    import cv2
    from PIL import Image

    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read image {path.name}: {e.strerror or type(e).__name__}"
                        ) from None
    flag = cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
    with _quiet_decoders():
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flag) if data else None
        if img is not None:
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if color else img
        try:
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("RGB" if color else "L"))
        except Exception as e:  # noqa: BLE001 -- Pillow raises many types for bad files
            raise DataError(f"cannot read image {path.name}: not a readable image file "
                            f"({type(e).__name__})") from None


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of any supported image; DataError naming the file otherwise."""
    img = _read(path, color=True)
    if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
        raise DataError(f"cannot read image {path.name}: unexpected shape {img.shape}")
    return img


def read_mask(path: Path) -> np.ndarray:
    """Boolean mask from a 0/255 (or 0/1) gray image."""
    m = _read(path, color=False)
    return m > (127 if m.max() > 1 else 0)


def find_mask(fov_dir: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}_mask"):
        for ext in IMAGE_EXTS:
            for cand in (fov_dir / f"{name}{ext}", fov_dir / f"{name}{ext.upper()}"):
                if cand.is_file():
                    return cand
    return None
