"""Label masks as people ship them -> checked class-index maps (and multilabel channel stacks).

- Colour-coded RGB masks (RITE's red artery / blue vein / green crossing / white uncertain):
  `snap_colours` maps each pixel to its class through the table's colours. Masks saved as JPEG
  hold colours near, not at, the table's (block artefacts, chroma subsampling blurs every edge),
  so a pixel goes to the nearest table colour within a tolerance; an image whose pixels are
  too often far from every colour is the wrong table or not a mask, and is refused.
- Index masks (mode L or P PNGs read as raw values): `check_index_mask` refuses values that are
  neither a class index nor the ignore index.
- Multilabel datasets: one binary PNG per label, stacked by `multilabel_channels`.
Every refusal is one DataError line naming the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unetdist.data.classes import IGNORE_INDEX, ClassTable
from unetdist.data.ingest.readers import RawFileError, to_binary
from unetdist.errors import DataError

SHOWN_COLOURS = 5  # colours named when an image is refused
_BLOCK = 1 << 18  # distinct colours measured at once (~3 MB of int32 each array)


def _palette(table: ClassTable) -> tuple[np.ndarray, np.ndarray]:
    """((M, 3) int32 colours, (M,) uint8 label values): the classes, then the ignore entry."""
    colours = [e.colour for e in table.entries]
    values = [e.index for e in table.entries]
    if table.ignore is not None:
        colours.append(table.ignore.colour)
        values.append(IGNORE_INDEX)
    return np.array(colours, dtype=np.int32), np.array(values, dtype=np.uint8)


def _codes(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H*W,) int32 colour codes R<<16 | G<<8 | B, in place (one array)."""
    codes = rgb[..., 0].astype(np.int32).reshape(-1)
    for channel in (1, 2):
        codes <<= 8
        codes |= rgb[..., channel].reshape(-1)
    return codes


def _as_rgb(codes: np.ndarray) -> np.ndarray:
    """Colour codes -> (U, 3) int32 RGB."""
    codes = codes.astype(np.int32, copy=False)
    return np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=1)


def _nearest(codes: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For (U,) colour codes: (nearest palette row as uint8, its squared distance), both (U,).

    One palette colour at a time over blocks of codes: a few MB of int32 whatever U is (a photo
    mistaken for a mask has millions of distinct colours). Ties go to the first palette row.
    """
    nearest = np.zeros(len(codes), dtype=np.uint8)  # a palette has <= 256 rows
    dist2 = np.empty(len(codes), dtype=np.int32)
    for start in range(0, len(codes), _BLOCK):
        part = slice(start, start + _BLOCK)
        rgb = _as_rgb(codes[part])
        best, arg = dist2[part], nearest[part]  # views: filled in place
        best.fill(np.iinfo(np.int32).max)
        for m, colour in enumerate(palette.tolist()):
            d = rgb - np.array(colour, dtype=np.int32)
            d = np.einsum("uc,uc->u", d, d)  # <= 3 * 255**2: fits int32
            closer = d < best
            best[closer] = d[closer]
            arg[closer] = m
    return nearest, dist2


def snap_colours(rgb: np.ndarray, table: ClassTable, tolerance: float, max_far_share: float,
                 name: str) -> tuple[np.ndarray, int]:
    """(H, W, 3) uint8 colour mask -> ((H, W) uint8 class-index map, pixels snapped).

    Each pixel takes the class (or IGNORE_INDEX) of the nearest table colour by Euclidean RGB
    distance. `snapped` counts the pixels whose colour was not exactly a table colour, i.e.
    every pixel whose class was inferred rather than read. A pixel farther than `tolerance`
    from every table colour is "far"; when more than `max_far_share` (0..1) of the pixels are
    far, the image is refused (DataError naming `name` and the most frequent far colours).
    Far pixels within that share still go to the nearest colour (a few stray JPEG artefacts
    should not cost an image).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DataError(f"{name}: a colour mask must be an RGB image (H, W, 3) uint8, got "
                        f"shape {rgb.shape} {rgb.dtype}")
    if not (tolerance >= 0 and 0 <= max_far_share <= 1):
        raise ValueError(f"snap_colours: tolerance {tolerance} must be >= 0 and max_far_share "
                         f"{max_far_share} in [0, 1]")
    h, w = rgb.shape[:2]
    if h * w == 0:
        return np.zeros((h, w), dtype=np.uint8), 0
    codes = _codes(rgb)
    # A mask holds few distinct colours (tens of thousands after JPEG): measure those, then map
    # pixels through a 2^24-entry table (16 MB). A sort without return_inverse is ~10x faster.
    uniq, counts = np.unique(codes, return_counts=True)
    counts = counts.astype(np.int32)  # < 2^31 pixels (codec.MAX_PIXELS); halves a photo's cost
    palette, values = _palette(table)
    nearest, dist2 = _nearest(uniq, palette)
    far = dist2 > tolerance * tolerance
    n_far = int(counts[far].sum())
    if n_far > max_far_share * h * w:
        del codes, nearest, dist2
        raise DataError(_far_message(name, uniq[far], counts[far], n_far / (h * w), tolerance,
                                     max_far_share))
    lut = np.zeros(1 << 24, dtype=np.uint8)
    lut[uniq] = values[nearest]
    snapped = h * w - int(counts[dist2 == 0].sum())
    return lut[codes].reshape(h, w), snapped


def _far_message(name: str, codes: np.ndarray, counts: np.ndarray, share: float,
                 tolerance: float, max_far_share: float) -> str:
    top = np.arange(len(counts))
    if len(counts) > SHOWN_COLOURS:  # a photo has millions of colours: sort only the top ones
        top = np.argpartition(counts, len(counts) - SHOWN_COLOURS)[-SHOWN_COLOURS:]
    top = top[np.argsort(-counts[top], kind="stable")]
    shown = ", ".join(f"{r},{g},{b} ({int(n)} px)"
                      for (r, g, b), n in zip(_as_rgb(codes[top]).tolist(), counts[top]))
    more = f" and {len(codes) - len(top)} more" if len(codes) > len(top) else ""
    return (f"{name}: {share:.1%} of the pixels are farther than {tolerance:g} from every "
            f"class colour (at most {max_far_share:.1%} allowed); most frequent such colours: "
            f"{shown}{more} (a wrong class table, or not a colour mask?)")


def check_index_mask(arr: np.ndarray, table: ClassTable, name: str) -> np.ndarray:
    """ARR, a (H, W) class-index mask, as uint8 once every value is a class index of TABLE (or
    its ignore index); otherwise DataError naming `name` and the first bad values."""
    if arr.ndim != 2:
        raise DataError(f"{name}: an index mask has one channel (H, W), got shape {arr.shape} "
                        "(colour-coded masks are read through the class colours instead)")
    if arr.dtype == np.uint8:
        present = np.flatnonzero(np.bincount(arr.ravel(), minlength=256))
    elif arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        present = np.unique(arr).astype(np.int64)
    else:
        raise DataError(f"{name}: an index mask holds integers, got {arr.dtype}")
    ok = (present >= 0) & (present <= 255)
    ok[ok] = table.valid_values()[present[ok]]
    if not ok.all():
        bad = present[~ok]
        shown = ", ".join(str(int(v)) for v in bad[:SHOWN_COLOURS])
        more = f" and {len(bad) - SHOWN_COLOURS} more" if len(bad) > SHOWN_COLOURS else ""
        allowed = f"0..{table.num_classes - 1}" + (
            f" and {IGNORE_INDEX} ({table.ignore.name})" if table.ignore is not None else "")
        raise DataError(f"{name}: index mask holds value(s) {shown}{more}, not in the class "
                        f"table (allowed: {allowed})")
    return arr.astype(np.uint8, copy=False)


def multilabel_channels(channels: Sequence[np.ndarray], table: ClassTable,
                        name: str) -> np.ndarray:
    """One binary mask per non-background class of TABLE, in table order -> (C, H, W) uint8
    {0, 1}. Each mask follows the readers' two-level rule (0/1, 0/255, ...); DataError naming
    `name` and the label when one is not binary, or when counts or sizes disagree."""
    labels = table.names[1:]
    if len(channels) != len(labels):
        raise DataError(f"{name}: {len(channels)} label masks for the {len(labels)} labels of "
                        f"the class table ({', '.join(labels)})")
    out = []
    for label, mask in zip(labels, channels):
        if mask.ndim != 2 or mask.shape != channels[0].shape:
            raise DataError(f"{name}: label {label!r} mask has shape {mask.shape}, expected "
                            f"(H, W) = {channels[0].shape}")
        try:
            out.append(to_binary(mask))
        except RawFileError as e:
            raise DataError(f"{name}: label {label!r}: {e}") from None
    return np.stack(out).astype(np.uint8, copy=False)
