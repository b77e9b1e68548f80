"""Decode and validate raw samples: readable, same size, binary masks. Problems are collected.

With a class table (`ReadOptions.classes`) labels are class masks instead, decided per file: a
colour image is snapped to the table's colours (`colour_masks.snap_colours`: JPEG-damaged
colours go to the nearest class within `snap_tolerance`), a one-channel image is an index map
(`colour_masks.check_index_mask`). The two-level binary rule is never applied to them, except
to a multilabel table's per-label masks (`RawSample.channels`), which are binary masks each and
become one bit mask (`classes.to_bitmask`).

Validation decodes every file once before anything is written; the writer decodes again (the
encoding dominates the cost, and keeping a whole dataset decoded in memory would not scale).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetdist.data.classes import ClassTable, to_bitmask
from unetdist.data.codec import MAX_PIXELS
from unetdist.data.ingest.colour_masks import check_index_mask, multilabel_channels, snap_colours
from unetdist.data.ingest.readers import (
    RawFileError,
    image_size,
    read_class_mask,
    read_image,
    read_mask,
)
from unetdist.data.ingest.records import Problem, RawSample
from unetdist.errors import DataError

MAX_SHOWN = 20  # problems listed in an error message; the rest are counted
DEFAULT_MAX_PIXELS = MAX_PIXELS  # --max-pixels: the readers refuse larger images too
# RGB distance within which a colour-mask pixel snaps to a class colour: JPEG at quality 90 with
# full chroma moves class colours by < 30, and the closest two RITE colours are 255 apart.
DEFAULT_SNAP_TOLERANCE = 60.0
DEFAULT_MAX_FAR_SHARE = 0.02  # a colour mask with more pixels far from every class is refused


@dataclass(frozen=True)
class ReadOptions:
    """How raw files are read: `shard --binarize T`, `--max-pixels N`, and the class table
    (`--classes`, or the layout's) with its snapping options."""

    binarize: float | None = None  # threshold 3+-level masks at T (pixels > T are 1)
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse larger files from their header, undecoded
    classes: ClassTable | None = None  # None: binary masks; else labels are class masks
    snap_tolerance: float = DEFAULT_SNAP_TOLERANCE
    max_far_share: float = DEFAULT_MAX_FAR_SHARE


@dataclass(frozen=True)
class LoadedSample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label: np.ndarray  # (H, W) uint8 {0, 1}, or class indices (255 ignore) with a table
    fov: np.ndarray | None  # None: the whole image
    label2: np.ndarray | None
    snapped: int | None = None  # pixels snapped to a class colour; None: not a colour mask


def _table_colours(table: ClassTable) -> frozenset:
    ignore = [table.ignore.colour] if table.ignore is not None else []
    return frozenset([e.colour for e in table.entries] + ignore)


def read_labels(path: Path, opts: ReadOptions) -> tuple[np.ndarray, int | None]:
    """A label file -> (label map, pixels snapped or None when it was not a colour mask):
    binary {0, 1} by the mask rule without a class table, else class indices (module doc)."""
    table = opts.classes
    if table is None:
        return read_mask(path, opts.binarize), None
    arr = read_class_mask(path, _table_colours(table))
    try:
        if arr.ndim == 3:
            return snap_colours(arr, table, opts.snap_tolerance, opts.max_far_share, str(path))
        return check_index_mask(arr, table, str(path)), None
    except DataError as e:  # the caller names the file
        raise RawFileError(str(e).removeprefix(f"{path}: ")) from None


def read_channels(paths: tuple[Path, ...], opts: ReadOptions) -> tuple[np.ndarray, None]:
    """A multilabel sample's per-label masks -> (bit mask, None): each by the binary mask rule,
    all the same size (RawFileError naming the label otherwise)."""
    masks = []
    for p in paths:
        try:
            _check_pixels(p, opts.max_pixels)
            masks.append(read_mask(p))
        except RawFileError as e:
            raise RawFileError(f"{p}: {e}") from None
    try:
        return to_bitmask(multilabel_channels(masks, opts.classes, "")), None
    except DataError as e:
        raise RawFileError(str(e).removeprefix(": ")) from None


def _check_pixels(path: Path, max_pixels: int) -> None:
    w, h = image_size(path)
    if w * h > max_pixels:
        raise RawFileError(f"image is {w}x{h} = {w * h / 1e6:.1f} MP, over --max-pixels "
                           f"{max_pixels} (raise it if this file is really that large)")


def load_sample(s: RawSample, opts: ReadOptions = ReadOptions()
                ) -> tuple[LoadedSample | None, list[Problem]]:
    """Decode a sample's files; (None, problems) when any file is unusable."""
    problems: list[Problem] = []

    def read(path: Path | None, reader):
        if path is None:
            return None
        try:
            _check_pixels(path, opts.max_pixels)  # before the decode allocates anything
            return reader(path)
        except RawFileError as e:
            problems.append(Problem(str(path), str(e)))
            return None

    image = read(s.image, read_image)
    if image is None:  # no point decoding (maybe huge) masks of an unusable image
        return None, problems
    if s.channels:  # a multilabel table's masks, one per label
        label = read(s.label, lambda p: read_channels(s.channels, opts))
    else:
        label = read(s.label, lambda p: read_labels(p, opts))  # (map, snapped)
    fov = read(s.fov, lambda p: read_mask(p, opts.binarize))
    label2 = read(s.label2, lambda p: read_labels(p, opts))
    masks = {"label": (s.label, label[0] if label else None), "FOV mask": (s.fov, fov),
             "label2": (s.label2, label2[0] if label2 else None)}
    for name, (path, mask) in masks.items():
        if mask is None:
            continue
        if mask.shape != image.shape[:2]:
            problems.append(Problem(str(path), f"{name} is {mask.shape[0]}x{mask.shape[1]} "
                                    f"(HxW) but image {s.image.name} is "
                                    f"{image.shape[0]}x{image.shape[1]}"))
        elif name == "FOV mask" and not mask.any():
            problems.append(Problem(str(path), "FOV mask is empty (all zero)"))
    if problems:
        return None, problems
    return LoadedSample(image, label[0], fov, masks["label2"][1], label[1]), []


def check_samples(samples: list[RawSample], *, threads: int = 4, progress: bool = True,
                  opts: ReadOptions = ReadOptions()) -> list[Problem]:
    """Every problem of every sample, in sample order (at most `threads` decoded at once)."""
    from unetdist.log import progress_iter

    def problems_of(s: RawSample) -> list[Problem]:
        return load_sample(s, opts)[1]

    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = progress_iter(pool.map(problems_of, samples), len(samples), desc="checking",
                                unit="img", enabled=progress)
        return [p for found in results for p in found]


def format_problems(problems: list[Problem], where: str) -> str:
    """A report for a DataError: the first MAX_SHOWN problems and how many more there are."""
    n = len(problems)
    lines = [f"{n} problem{'s' if n != 1 else ''} in {where}; nothing was written:"]
    lines += [f"  {p}" for p in problems[:MAX_SHOWN]]
    if n > MAX_SHOWN:
        lines.append(f"  ... and {n - MAX_SHOWN} more")
    return "\n".join(lines)
